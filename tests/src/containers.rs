//! Real containers for root tests: podman with runc, from an image made here of Debian's
//! static busybox (no registry needed).
//!
//! A [`Container`] runs busybox's httpd with no network but its own loopback (`--network
//! none`): the container gets a network namespace of its own, reached through its process
//! (`/proc/PID/ns/net`), and the test's traffic never leaves that namespace. It is removed when
//! the value is dropped, also when the test panics.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::netns::run_cmd;
use crate::wait::wait_until;

/// The image the tests build, and remove with [`Image`].
pub const IMAGE: &str = "localhost/teardown-test-busybox:1";

/// The port httpd listens on inside the container.
pub const HTTP_PORT: u16 = 8080;

/// The test image; removed (with what is left of its containers) when its last holder drops it.
///
/// Tests of one binary run in parallel and share the image: building it twice at once would
/// race on the rootfs, and one test's removal would kill the other's containers.
#[derive(Debug)]
pub struct Image;

/// How many [`Image`] values are alive in this process.
static HOLDERS: std::sync::Mutex<usize> = std::sync::Mutex::new(0);

impl Image {
    /// Imports a rootfs of busybox, `sh` and `httpd`, and an index page, unless this process
    /// already holds it.
    pub fn build() -> io::Result<Image> {
        let mut holders = HOLDERS.lock().unwrap_or_else(|e| e.into_inner());
        if *holders == 0 {
            import_image()?;
        }
        *holders += 1;
        Ok(Image)
    }
}

fn import_image() -> io::Result<()> {
    let dir = std::env::temp_dir().join(format!("teardown-rootfs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("bin"))?;
    std::fs::create_dir_all(dir.join("www"))?;
    std::fs::copy("/bin/busybox", dir.join("bin/busybox"))?;
    for applet in ["sh", "httpd"] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet))?;
    }
    std::fs::write(dir.join("www/index.html"), "hello\n")?;
    let tar = format!(
        "tar -C {} -c . | podman import - {IMAGE}",
        shell_quote(&dir)
    );
    let built = run_cmd(Command::new("sh").args(["-c", &tar]));
    let _ = std::fs::remove_dir_all(&dir);
    built.map(|_| ())
}

impl Drop for Image {
    fn drop(&mut self) {
        let mut holders = HOLDERS.lock().unwrap_or_else(|e| e.into_inner());
        *holders -= 1;
        if *holders == 0 {
            let _ = Command::new("podman").args(["rmi", "-f", IMAGE]).output();
        }
    }
}

fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

/// A running container, removed when dropped.
#[derive(Debug)]
pub struct Container {
    pub name: String,
    /// The full container id podman gave it.
    pub id: String,
    /// Its first process, on the host.
    pub pid: u32,
}

impl Container {
    /// Starts busybox httpd in a container named `PREFIX-PID` and waits until it answers.
    pub fn httpd(_image: &Image, prefix: &str) -> io::Result<Container> {
        let name = format!("{prefix}-{}", std::process::id());
        let _ = Command::new("podman").args(["rm", "-f", &name]).output();
        let runtime = ["/usr/sbin/runc", "/usr/bin/runc"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("runc");
        let id = run_cmd(Command::new("podman").args([
            "--runtime",
            runtime,
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            "none",
            // runc cannot raise these limits here; podman's defaults ask it to.
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=4096:4096",
            IMAGE,
            "httpd",
            "-f",
            "-p",
            &HTTP_PORT.to_string(),
            "-h",
            "/www",
        ]))?
        .trim()
        .to_string();
        let mut c = Container { name, id, pid: 0 };
        let pid = run_cmd(Command::new("podman").args([
            "inspect",
            "--format",
            "{{.State.Pid}}",
            &c.name,
        ]))?;
        c.pid = pid
            .trim()
            .parse()
            .map_err(|e| io::Error::other(format!("podman inspect gave pid {pid:?}: {e}")))?;
        wait_until("httpd in the container", Duration::from_secs(30), || {
            Ok(c.run_inside(|| TcpStream::connect(("127.0.0.1", HTTP_PORT)).is_ok()))
        })?;
        Ok(c)
    }

    /// `/proc/PID/ns/net` of its process.
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.pid))
    }

    /// The inode of its network namespace.
    pub fn netns_inode(&self) -> io::Result<u32> {
        let t = std::fs::read_link(self.netns_path())?;
        teardown::sock_diag::namespaces::parse_net_link(&t.to_string_lossy())
            .ok_or_else(|| io::Error::other(format!("odd namespace link {t:?}")))
    }

    /// Runs `f` on a thread inside the container's network namespace.
    pub fn run_inside<F: FnOnce() -> T + Send, T: Send>(&self, f: F) -> T {
        match teardown::sock_diag::netns::run_in(&self.netns_path(), f) {
            Ok(v) => v,
            Err(e) => panic!("entering the namespace of container {}: {e}", self.name),
        }
    }

    /// Makes `n` HTTP/1.0 requests to httpd from inside the container; httpd closes each
    /// connection first, so each leaves a TIME_WAIT socket in the container's namespace.
    pub fn get(&self, n: usize) -> io::Result<()> {
        self.run_inside(|| {
            for _ in 0..n {
                let mut s = TcpStream::connect(("127.0.0.1", HTTP_PORT))?;
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
                let mut body = Vec::new();
                s.read_to_end(&mut body)?;
                if !body.starts_with(b"HTTP/1.") {
                    return Err(io::Error::other("httpd did not answer HTTP"));
                }
            }
            Ok(())
        })
    }

    /// `ss -H ARGS` inside the container's namespace.
    pub fn ss(&self, args: &[&str]) -> io::Result<Vec<String>> {
        let net = format!("--net={}", self.netns_path().display());
        let out = run_cmd(
            Command::new("nsenter")
                .arg(net)
                .arg("ss")
                .arg("-H")
                .args(args),
        )?;
        Ok(out
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect())
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "-f", "-t", "0", &self.name])
            .output();
    }
}
