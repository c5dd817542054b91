//! Who owns a network namespace: the container behind a process in it.
//!
//! The container is read from the process's cgroup (`/proc/PID/cgroup`), whose path names the
//! engine and the container's 64-hex id in each engine's documented format, and under
//! Kubernetes also the pod's UID. Names come from the engines' own metadata where the host has
//! it: podman's `containers.json`, docker's per-container `config.v2.json`, and the kubelet's
//! `/var/log/pods/<namespace>_<pod>_<uid>` directories. A host without an engine, a file that is
//! missing, oversized or malformed, only loses the name: nothing here fails the caller.
//!
//! Paths are those seen from the agent's cgroup namespace; the agent runs on the host, where
//! they are the full paths.
//!
//! [`ContainerNames`] keeps what it read: podman's file and the kubelet's directory are read
//! again only when their modification time (or size, or inode) changed, and the resolved
//! containers are kept up to a bound, the oldest dropped first.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// At most this much of `/proc/PID/cgroup` is read (a real one is a few hundred bytes).
pub const CGROUP_MAX_BYTES: u64 = 64 * 1024;
/// At most this much of podman's `containers.json` (all containers of the host, stopped ones
/// too, about 500 bytes each).
pub const PODMAN_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// At most this much of one docker `config.v2.json`.
pub const DOCKER_MAX_BYTES: u64 = 1024 * 1024;
/// At most this many entries of the kubelet's pod log directory are read.
pub const KUBELET_MAX_PODS: usize = 65_536;
/// How many resolved containers [`ContainerNames::default`] keeps.
pub const DEFAULT_CAPACITY: usize = 1024;

/// The container engine, as told by the cgroup path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Runtime {
    Podman,
    Docker,
    /// containerd, through the Kubernetes CRI (`cri-containerd-`) or nerdctl (`nerdctl-`).
    Containerd,
    /// CRI-O.
    Crio,
    /// A Kubernetes container whose path (the kubelet's cgroupfs driver: `pod<uid>/<id>`) does
    /// not say which engine runs it.
    Cri,
}

impl Runtime {
    /// The name used in text, JSON and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Podman => "podman",
            Runtime::Docker => "docker",
            Runtime::Containerd => "containerd",
            Runtime::Crio => "crio",
            Runtime::Cri => "cri",
        }
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A container as named by a cgroup path: engine, id, and the Kubernetes pod if any.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContainerRef {
    pub runtime: Runtime,
    /// 64 lowercase hex digits.
    pub id: String,
    /// The pod's UID with dashes (`74c13223-5a00-11e9-b385-42010a80018d`), under Kubernetes.
    pub pod_uid: Option<String>,
}

/// What a cgroup path component says.
enum Component {
    Container(Runtime, String),
    /// A container engine's monitor (podman's or CRI-O's conmon): not the container.
    Monitor,
    Other,
}

impl ContainerRef {
    /// The container named by the text of `/proc/PID/cgroup`: cgroup v2 (`0::/path`), v1
    /// (`N:controllers:/path`) or both (hybrid). The first line that names one wins; the lines
    /// of one process name the same container. None for a process in no container.
    pub fn from_cgroup(text: &str) -> Option<ContainerRef> {
        text.lines().find_map(|line| {
            // The path is the third field; it may itself hold colons.
            let mut fields = line.splitn(3, ':');
            let (_hierarchy, _controllers) = (fields.next()?, fields.next()?);
            ContainerRef::from_cgroup_path(fields.next()?)
        })
    }

    /// The container named by one cgroup path, such as
    /// `/machine.slice/libpod-<id>.scope/container`; None for a host path (`/init.scope`,
    /// `/user.slice/...`, `/`) or a container engine's monitor process.
    pub fn from_cgroup_path(path: &str) -> Option<ContainerRef> {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        // The deepest component naming a container wins: a runtime may add its own sub-groups
        // below (crun's `container`), and a nested engine's containers sit below the outer one.
        for i in (0..parts.len()).rev() {
            let parent = i.checked_sub(1).map(|p| parts[p]);
            match classify(parts[i], parent) {
                Component::Container(runtime, id) => {
                    return Some(ContainerRef {
                        runtime,
                        id,
                        pod_uid: pod_uid(&parts[..=i]),
                    });
                }
                Component::Monitor => return None,
                Component::Other => {}
            }
        }
        None
    }
}

/// One path component: `<prefix><id>[.scope]`, containerd's `<slice>:<prefix>:<id>`, or a bare id
/// under docker's cgroupfs parent or a kubelet cgroupfs pod.
fn classify(part: &str, parent: Option<&str>) -> Component {
    const MONITORS: [&str; 2] = ["libpod-conmon-", "crio-conmon-"];
    const PREFIXES: [(&str, Runtime); 5] = [
        ("libpod-", Runtime::Podman),
        ("docker-", Runtime::Docker),
        ("cri-containerd-", Runtime::Containerd),
        ("nerdctl-", Runtime::Containerd),
        ("crio-", Runtime::Crio),
    ];
    let base = part.strip_suffix(".scope").unwrap_or(part);
    if MONITORS.iter().any(|m| base.starts_with(m)) {
        return Component::Monitor;
    }
    for (prefix, runtime) in PREFIXES {
        if let Some(id) = base.strip_prefix(prefix).and_then(container_id) {
            return Component::Container(runtime, id);
        }
    }
    // The systemd driver's unit name as some hosts show it on cgroup v1.
    let mut fields = base.split(':');
    if let (Some(_slice), Some(prefix), Some(id), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    {
        let runtime = match prefix {
            "cri-containerd" => Some(Runtime::Containerd),
            "crio" => Some(Runtime::Crio),
            "docker" => Some(Runtime::Docker),
            _ => None,
        };
        if let (Some(runtime), Some(id)) = (runtime, container_id(id)) {
            return Component::Container(runtime, id);
        }
    }
    if let Some(id) = container_id(base) {
        match parent {
            Some("docker") => return Component::Container(Runtime::Docker, id),
            Some(p) if p.strip_prefix("pod").and_then(normalise_uid).is_some() => {
                return Component::Container(Runtime::Cri, id)
            }
            _ => {}
        }
    }
    Component::Other
}

/// `s` as a container id if it is 64 hex digits.
fn container_id(s: &str) -> Option<String> {
    (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())).then(|| s.to_ascii_lowercase())
}

/// The pod UID in the components down to a container's, if they are the kubelet's: the systemd
/// driver's `kubepods-<qos>-pod<uid with _>.slice` (no QoS part for a guaranteed pod), or the
/// cgroupfs driver's `pod<uid>`.
fn pod_uid(parents: &[&str]) -> Option<String> {
    if !parents.iter().any(|p| p.contains("kubepods")) {
        return None;
    }
    parents.iter().rev().find_map(|p| {
        // containerd's `<slice>:<prefix>:<id>` form carries the pod slice before the colon.
        let p = p.split(':').next().unwrap_or(p);
        match p.strip_suffix(".slice") {
            Some(slice) => {
                let at = slice.rfind("-pod")?;
                normalise_uid(&slice[at + "-pod".len()..])
            }
            None => normalise_uid(p.strip_prefix("pod")?),
        }
    })
}

/// A UUID written with dashes or (systemd unit names) underscores, as lowercase with dashes.
fn normalise_uid(s: &str) -> Option<String> {
    let uid: String = s
        .chars()
        .map(|c| {
            if c == '_' {
                '-'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect();
    let well_formed = uid.len() == 36
        && uid.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        });
    well_formed.then_some(uid)
}

/// A Kubernetes pod.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Pod {
    /// The pod's namespace, when the kubelet's log directories name it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The pod's name, likewise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub uid: String,
}

/// A container with what the host knows of its names (the `container` object of JSON output).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Container {
    pub runtime: Runtime,
    pub id: String,
    /// The engine's name for it (podman and docker).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<Pod>,
}

impl Container {
    /// The id's first 12 hex digits, as the engines' own listings show it.
    pub fn short_id(&self) -> &str {
        self.id.get(..12).unwrap_or(&self.id)
    }

    /// What an operator knows it by: `k8s:<namespace>/<pod>` for a named pod, else
    /// `<runtime>:<name>`, else `k8s:<pod uid>`, else `<runtime>:<12 hex digits>`.
    pub fn display(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Container {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(Pod {
            namespace: Some(ns),
            name: Some(name),
            ..
        }) = &self.pod
        {
            return write!(f, "k8s:{ns}/{name}");
        }
        if let Some(name) = &self.name {
            return write!(f, "{}:{name}", self.runtime);
        }
        if let Some(pod) = &self.pod {
            return write!(f, "k8s:{}", pod.uid);
        }
        write!(f, "{}:{}", self.runtime, self.short_id())
    }
}

/// Where the host's container metadata lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPaths {
    /// The proc file system (`/proc`).
    pub proc_root: PathBuf,
    /// Podman's (root) container store: a JSON array of objects with `id` and `names`.
    pub podman_containers: PathBuf,
    /// Docker's per-container directories, each with a `config.v2.json`.
    pub docker_containers: PathBuf,
    /// The kubelet's pod log directories, `<namespace>_<pod>_<uid>`.
    pub kubelet_pods: PathBuf,
}

impl Default for ContainerPaths {
    fn default() -> Self {
        Self::under(Path::new("/"))
    }
}

impl ContainerPaths {
    /// The usual paths below `root` instead of `/`.
    pub fn under(root: &Path) -> Self {
        Self {
            proc_root: root.join("proc"),
            podman_containers: root
                .join("var/lib/containers/storage/overlay-containers/containers.json"),
            docker_containers: root.join("var/lib/docker/containers"),
            kubelet_pods: root.join("var/log/pods"),
        }
    }
}

/// What tells a file changed: modification time, size and inode (podman and docker replace
/// their files by renaming a new one over them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    mtime: Option<SystemTime>,
    len: u64,
    ino: u64,
}

/// The stamp of `path`, None if it does not exist or cannot be read.
fn stamp_of(path: &Path) -> Option<Stamp> {
    let m = fs::metadata(path).ok()?;
    Some(Stamp {
        mtime: m.modified().ok(),
        len: m.len(),
        ino: m.ino(),
    })
}

/// The whole of `path` if it is at most `max` bytes.
fn read_bounded(path: &Path, max: u64) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    File::open(path)
        .ok()?
        .take(max.saturating_add(1))
        .read_to_end(&mut buf)
        .ok()?;
    (buf.len() as u64 <= max).then_some(buf)
}

/// A name fit for text, JSON and metrics labels: the characters engines and Kubernetes allow
/// in names, anything else is treated as no name.
fn plain_name(s: &str) -> Option<String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    ok.then(|| s.to_string())
}

/// An index read from one file or directory, read again when its stamp changes.
#[derive(Debug)]
struct Indexed<T> {
    /// None until first read; then the stamp seen at that read (None: missing).
    seen: Option<Option<Stamp>>,
    /// Counts the reads, so that a cached answer can tell it is stale.
    generation: u64,
    map: T,
}

impl<T: Default> Indexed<T> {
    fn new() -> Self {
        Self {
            seen: None,
            generation: 0,
            map: T::default(),
        }
    }

    fn refresh(&mut self, path: &Path, read: impl FnOnce(&Path) -> T) {
        let now = stamp_of(path);
        if self.seen != Some(now) {
            self.map = if now.is_some() {
                read(path)
            } else {
                T::default()
            };
            self.seen = Some(now);
            self.generation += 1;
        }
    }
}

#[derive(Deserialize)]
struct PodmanEntry {
    #[serde(default)]
    id: String,
    #[serde(default)]
    names: Vec<String>,
}

/// Podman's container ids and first names; empty for a file too large or malformed.
fn read_podman(path: &Path) -> HashMap<String, String> {
    let Some(bytes) = read_bounded(path, PODMAN_MAX_BYTES) else {
        return HashMap::new();
    };
    let entries: Vec<PodmanEntry> = serde_json::from_slice(&bytes).unwrap_or_default();
    entries
        .into_iter()
        .filter_map(|e| {
            let id = container_id(&e.id)?;
            let name = plain_name(e.names.first()?)?;
            Some((id, name))
        })
        .collect()
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(rename = "Name", default)]
    name: String,
}

/// Docker's name for a container (`"Name": "/web"` gives `web`).
fn read_docker_name(path: &Path) -> Option<String> {
    let bytes = read_bounded(path, DOCKER_MAX_BYTES)?;
    let config: DockerConfig = serde_json::from_slice(&bytes).ok()?;
    plain_name(config.name.strip_prefix('/').unwrap_or(&config.name))
}

/// The kubelet's pods by UID: (namespace, name), from its `<namespace>_<pod>_<uid>` log
/// directories (neither a namespace nor a pod name may hold an underscore).
fn read_kubelet_pods(dir: &Path) -> HashMap<String, (String, String)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return HashMap::new();
    };
    entries
        .take(KUBELET_MAX_PODS)
        .filter_map(|e| {
            let file_name = e.ok()?.file_name();
            let mut fields = file_name.to_str()?.split('_');
            let (ns, pod, uid) = (fields.next()?, fields.next()?, fields.next()?);
            if fields.next().is_some() {
                return None;
            }
            Some((normalise_uid(uid)?, (plain_name(ns)?, plain_name(pod)?)))
        })
        .collect()
}

/// A resolved container and what it was resolved from.
#[derive(Debug)]
struct Resolved {
    from: ContainerRef,
    podman_generation: u64,
    kubelet_generation: u64,
    docker_stamp: Option<Stamp>,
    container: Container,
}

/// Names containers from the engines' metadata, keeping what it read (see the module's doc).
#[derive(Debug)]
pub struct ContainerNames {
    paths: ContainerPaths,
    capacity: usize,
    podman: Indexed<HashMap<String, String>>,
    kubelet: Indexed<HashMap<String, (String, String)>>,
    resolved: HashMap<String, Resolved>,
    /// Container ids in `resolved`, oldest first.
    order: VecDeque<String>,
}

impl Default for ContainerNames {
    fn default() -> Self {
        Self::new(ContainerPaths::default(), DEFAULT_CAPACITY)
    }
}

impl ContainerNames {
    /// A cache reading the metadata at `paths`, keeping at most `capacity` (at least 1)
    /// resolved containers.
    pub fn new(paths: ContainerPaths, capacity: usize) -> Self {
        Self {
            paths,
            capacity: capacity.max(1),
            podman: Indexed::new(),
            kubelet: Indexed::new(),
            resolved: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The paths it reads.
    pub fn paths(&self) -> &ContainerPaths {
        &self.paths
    }

    /// How many resolved containers it keeps now.
    pub fn len(&self) -> usize {
        self.resolved.len()
    }

    /// Whether it keeps none.
    pub fn is_empty(&self) -> bool {
        self.resolved.is_empty()
    }

    /// The container `r` names, with the names the host has for it.
    pub fn resolve(&mut self, r: &ContainerRef) -> Container {
        if r.runtime == Runtime::Podman {
            self.podman
                .refresh(&self.paths.podman_containers, read_podman);
        }
        if r.pod_uid.is_some() {
            self.kubelet
                .refresh(&self.paths.kubelet_pods, read_kubelet_pods);
        }
        let docker_config = (r.runtime == Runtime::Docker).then(|| {
            self.paths
                .docker_containers
                .join(&r.id)
                .join("config.v2.json")
        });
        let docker_stamp = docker_config.as_deref().and_then(stamp_of);
        if let Some(cached) = self.resolved.get(&r.id) {
            if cached.from == *r
                && cached.podman_generation == self.podman.generation
                && cached.kubelet_generation == self.kubelet.generation
                && cached.docker_stamp == docker_stamp
            {
                return cached.container.clone();
            }
        }
        let name = match r.runtime {
            Runtime::Podman => self.podman.map.get(&r.id).cloned(),
            Runtime::Docker => docker_config.as_deref().and_then(read_docker_name),
            _ => None,
        };
        let pod = r.pod_uid.as_ref().map(|uid| {
            let known = self.kubelet.map.get(uid);
            Pod {
                namespace: known.map(|(ns, _)| ns.clone()),
                name: known.map(|(_, name)| name.clone()),
                uid: uid.clone(),
            }
        });
        let container = Container {
            runtime: r.runtime,
            id: r.id.clone(),
            name,
            pod,
        };
        let entry = Resolved {
            from: r.clone(),
            podman_generation: self.podman.generation,
            kubelet_generation: self.kubelet.generation,
            docker_stamp,
            container: container.clone(),
        };
        if self.resolved.insert(r.id.clone(), entry).is_none() {
            self.order.push_back(r.id.clone());
            while self.order.len() > self.capacity {
                if let Some(oldest) = self.order.pop_front() {
                    self.resolved.remove(&oldest);
                }
            }
        }
        container
    }
}

/// The container process `pid` runs in, read from its cgroup under the cache's proc root; None
/// for a process in no container or one that is gone.
pub fn container_of_pid(pid: u32, names: &mut ContainerNames) -> Option<Container> {
    let path = names.paths.proc_root.join(pid.to_string()).join("cgroup");
    let bytes = read_bounded(&path, CGROUP_MAX_BYTES)?;
    let r = ContainerRef::from_cgroup(&String::from_utf8_lossy(&bytes))?;
    Some(names.resolve(&r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    const ID: &str = "3f2a1b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708";
    const UID: &str = "74c13223-5a00-11e9-b385-42010a80018d";
    const UID_SYSTEMD: &str = "74c13223_5a00_11e9_b385_42010a80018d";

    /// The container id podman gave a busybox httpd container run with runc on a host whose
    /// cgroups are in hybrid v1 mode (podman's cgroupfs manager).
    const REAL_ID: &str = "d332b9a3788285b215d05139f05af991b55fb592f826ff71f1e3d73c01da978f";
    /// That container's init process's `/proc/PID/cgroup`, verbatim.
    const REAL_PODMAN_CGROUP: &str = "\
9:name=systemd:/libpod_parent/libpod-d332b9a3788285b215d05139f05af991b55fb592f826ff71f1e3d73c01da978f
8:pids:/libpod_parent/libpod-d332b9a3788285b215d05139f05af991b55fb592f826ff71f1e3d73c01da978f
7:blkio:/libpod_parent/libpod-d332b9a3788285b215d05139f05af991b55fb592f826ff71f1e3d73c01da978f
6:freezer:/libpod_parent/libpod-d332b9a3788285b215d05139f05af991b55fb592f826ff71f1e3d73c01da978f
5:devices:/libpod_parent/libpod-d332b9a3788285b215d05139f05af991b55fb592f826ff71f1e3d73c01da978f
4:memory:/libpod_parent/libpod-d332b9a3788285b215d05139f05af991b55fb592f826ff71f1e3d73c01da978f
3:cpuset:/libpod_parent/libpod-d332b9a3788285b215d05139f05af991b55fb592f826ff71f1e3d73c01da978f
2:cpuacct:/libpod_parent/libpod-d332b9a3788285b215d05139f05af991b55fb592f826ff71f1e3d73c01da978f
1:cpu:/libpod_parent/libpod-d332b9a3788285b215d05139f05af991b55fb592f826ff71f1e3d73c01da978f
0::/libpod_parent/libpod-d332b9a3788285b215d05139f05af991b55fb592f826ff71f1e3d73c01da978f
";
    /// The `/proc/PID/cgroup` of that container's conmon, verbatim: not the container.
    const REAL_CONMON_CGROUP: &str = "\
9:name=systemd:/
8:pids:/libpod_parent/conmon
7:blkio:/libpod_parent/conmon
6:freezer:/libpod_parent/conmon
5:devices:/libpod_parent/conmon
4:memory:/libpod_parent/conmon
3:cpuset:/libpod_parent/conmon
2:cpuacct:/libpod_parent/conmon
1:cpu:/libpod_parent/conmon
0::/
";
    /// Podman's containers.json with that container in it, verbatim.
    const REAL_CONTAINERS_JSON: &str = r#"[{"id":"d332b9a3788285b215d05139f05af991b55fb592f826ff71f1e3d73c01da978f","names":["httpd-test"],"image":"bfe3d1ad01f28b19157282d3935983d2813ce781ca6b9b11b8768f9fcabdf2d7","layer":"d3831791e572b6b7fd3d8496d4dea42511c3c7f81076544f61a1b542cc9f42ea","metadata":"{\"image-name\":\"localhost/busybox-httpd:1\",\"image-id\":\"bfe3d1ad01f28b19157282d3935983d2813ce781ca6b9b11b8768f9fcabdf2d7\",\"name\":\"httpd-test\",\"created-at\":1796185203}","created":"2026-12-02T04:20:03.764241961Z","flags":{"MountLabel":"","ProcessLabel":""}}]"#;

    fn parse(path: &str) -> Option<(Runtime, String, Option<String>)> {
        ContainerRef::from_cgroup(&format!("0::{path}\n")).map(|r| (r.runtime, r.id, r.pod_uid))
    }

    fn found(runtime: Runtime, pod: bool) -> Option<(Runtime, String, Option<String>)> {
        Some((runtime, ID.to_string(), pod.then(|| UID.to_string())))
    }

    /// A directory of its own under the system's temporary directory, removed on drop.
    struct TempRoot(PathBuf);

    impl TempRoot {
        fn new() -> Self {
            static N: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "teardown-containers-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            TempRoot(dir)
        }

        fn paths(&self) -> ContainerPaths {
            ContainerPaths::under(&self.0)
        }

        fn write(&self, path: &Path, text: &str) {
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            }
            fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
    }

    impl Drop for TempRoot {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn set_mtime(path: &Path, t: SystemTime) {
        File::options()
            .write(true)
            .open(path)
            .and_then(|f| f.set_modified(t))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }

    fn podman_ref(id: &str) -> ContainerRef {
        ContainerRef {
            runtime: Runtime::Podman,
            id: id.to_string(),
            pod_uid: None,
        }
    }

    fn docker_ref(id: &str) -> ContainerRef {
        ContainerRef {
            runtime: Runtime::Docker,
            id: id.to_string(),
            pod_uid: None,
        }
    }

    fn podman_json(entries: &[(&str, &str)]) -> String {
        let list: Vec<_> = entries
            .iter()
            .map(|(id, name)| serde_json::json!({"id": id, "names": [name], "image": "x"}))
            .collect();
        serde_json::Value::Array(list).to_string()
    }

    #[test]
    fn the_podman_container_seen_on_a_real_host() {
        let r = ContainerRef::from_cgroup(REAL_PODMAN_CGROUP);
        assert_eq!(
            r,
            Some(ContainerRef {
                runtime: Runtime::Podman,
                id: REAL_ID.to_string(),
                pod_uid: None,
            })
        );
        assert_eq!(ContainerRef::from_cgroup(REAL_CONMON_CGROUP), None);
    }

    #[test]
    fn podman_formats() {
        for path in [
            format!("/machine.slice/libpod-{ID}.scope"),
            format!("/machine.slice/libpod-{ID}.scope/container"),
            format!("/libpod_parent/libpod-{ID}"),
            format!("/libpod_parent/libpod-{ID}/container"),
            format!(
                "/machine.slice/machine-libpod_pod_{}.slice/libpod-{ID}.scope",
                &ID[..64]
            ),
            format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"),
        ] {
            assert_eq!(parse(&path), found(Runtime::Podman, false), "{path}");
        }
    }

    #[test]
    fn a_monitor_is_not_its_container() {
        for path in [
            format!("/machine.slice/libpod-conmon-{ID}.scope"),
            format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-conmon-{ID}.scope"),
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SYSTEMD}.slice/crio-conmon-{ID}.scope"),
        ] {
            assert_eq!(parse(&path), None, "{path}");
        }
    }

    #[test]
    fn docker_formats() {
        assert_eq!(
            parse(&format!("/system.slice/docker-{ID}.scope")),
            found(Runtime::Docker, false)
        );
        let v1 = format!("12:memory:/docker/{ID}\n11:cpu,cpuacct:/docker/{ID}\n");
        assert_eq!(
            ContainerRef::from_cgroup(&v1).map(|r| (r.runtime, r.id)),
            Some((Runtime::Docker, ID.to_string()))
        );
    }

    #[test]
    fn kubernetes_systemd_driver() {
        let pod_slice = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SYSTEMD}.slice"
        );
        for (leaf, runtime) in [
            (format!("cri-containerd-{ID}.scope"), Runtime::Containerd),
            (format!("crio-{ID}.scope"), Runtime::Crio),
            (format!("docker-{ID}.scope"), Runtime::Docker),
        ] {
            assert_eq!(
                parse(&format!("{pod_slice}/{leaf}")),
                found(runtime, true),
                "{leaf}"
            );
        }
        // A guaranteed pod has no QoS slice.
        assert_eq!(
            parse(&format!(
                "/kubepods.slice/kubepods-pod{UID_SYSTEMD}.slice/cri-containerd-{ID}.scope"
            )),
            found(Runtime::Containerd, true)
        );
        // The kubelet below its own cgroup root (as kind nodes run it).
        assert_eq!(
            parse(&format!(
                "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/\
                 kubelet-kubepods-besteffort-pod{UID_SYSTEMD}.slice/cri-containerd-{ID}.scope"
            )),
            found(Runtime::Containerd, true)
        );
        // containerd's systemd unit as some cgroup v1 hosts show it.
        assert_eq!(
            parse(&format!(
                "/system.slice/containerd.service/kubepods-besteffort-pod{UID_SYSTEMD}.slice:cri-containerd:{ID}"
            )),
            found(Runtime::Containerd, true)
        );
    }

    #[test]
    fn kubernetes_cgroupfs_driver() {
        for path in [
            format!("/kubepods/besteffort/pod{UID}/{ID}"),
            format!("/kubepods/burstable/pod{UID}/{ID}"),
            format!("/kubepods/pod{UID}/{ID}"),
        ] {
            assert_eq!(parse(&path), found(Runtime::Cri, true), "{path}");
        }
        // v1 lines, as a real cgroup v1 node lists them.
        let v1 = format!(
            "11:devices:/kubepods/besteffort/pod{UID}/{ID}\n10:perf_event:/kubepods/besteffort/pod{UID}/{ID}\n"
        );
        assert_eq!(
            ContainerRef::from_cgroup(&v1).and_then(|r| r.pod_uid),
            Some(UID.to_string())
        );
    }

    #[test]
    fn host_processes_are_in_no_container() {
        for text in [
            "0::/user.slice/user-0.slice/session-3.scope\n",
            "0::/init.scope\n",
            "0::/\n",
            "0::/system.slice/docker.service\n",
            "0::/system.slice/containerd.service\n",
            "0::/kubepods.slice/kubepods-burstable.slice\n",
            "12:pids:/user.slice\n1:name=systemd:/user.slice/user-1000.slice/session-2.scope\n",
            "",
            "garbage without colons\n",
        ] {
            assert_eq!(ContainerRef::from_cgroup(text), None, "{text:?}");
        }
        for path in [
            "/docker/notanid".to_string(),
            format!("/machine.slice/libpod-{}.scope", &ID[..63]),
            format!("/system.slice/docker-{}x.scope", &ID[..63]),
            // A bare id whose parent says nothing about the engine.
            format!("/lxc/{ID}"),
        ] {
            assert_eq!(parse(&path), None, "{path}");
        }
        // A `pod<uid>` component outside the kubelet's tree names no pod.
        assert_eq!(
            parse(&format!("/pod{UID}/docker-{ID}.scope")),
            found(Runtime::Docker, false)
        );
    }

    #[test]
    fn json_names_only_what_is_known() {
        let bare = Container {
            runtime: Runtime::Docker,
            id: ID.to_string(),
            name: None,
            pod: None,
        };
        assert_eq!(
            serde_json::to_string(&bare).ok().as_deref(),
            Some(format!(r#"{{"runtime":"docker","id":"{ID}"}}"#).as_str())
        );
        let in_pod = Container {
            runtime: Runtime::Crio,
            id: ID.to_string(),
            name: None,
            pod: Some(Pod {
                namespace: Some("default".into()),
                name: Some("nginx-abc".into()),
                uid: UID.to_string(),
            }),
        };
        assert_eq!(
            serde_json::to_string(&in_pod).ok().as_deref(),
            Some(
                format!(
                    r#"{{"runtime":"crio","id":"{ID}","pod":{{"namespace":"default","name":"nginx-abc","uid":"{UID}"}}}}"#
                )
                .as_str()
            )
        );
    }

    #[test]
    fn display_says_what_an_operator_knows() {
        let mut c = Container {
            runtime: Runtime::Docker,
            id: ID.to_string(),
            name: None,
            pod: None,
        };
        assert_eq!(c.display(), "docker:3f2a1b4c5d6e");
        c.name = Some("web".into());
        assert_eq!(c.display(), "docker:web");
        c.runtime = Runtime::Podman;
        assert_eq!(c.to_string(), "podman:web");
        c.name = None;
        c.pod = Some(Pod {
            namespace: None,
            name: None,
            uid: UID.to_string(),
        });
        assert_eq!(c.display(), format!("k8s:{UID}"));
        c.pod = Some(Pod {
            namespace: Some("default".into()),
            name: Some("nginx-abc".into()),
            uid: UID.to_string(),
        });
        assert_eq!(c.display(), "k8s:default/nginx-abc");
    }

    #[test]
    fn the_default_paths_are_the_hosts() {
        let p = ContainerPaths::default();
        assert_eq!(p.proc_root, Path::new("/proc"));
        assert_eq!(
            p.podman_containers,
            Path::new("/var/lib/containers/storage/overlay-containers/containers.json")
        );
        assert_eq!(p.docker_containers, Path::new("/var/lib/docker/containers"));
        assert_eq!(p.kubelet_pods, Path::new("/var/log/pods"));
    }

    #[test]
    fn podman_names_from_its_store() {
        let root = TempRoot::new();
        let paths = root.paths();
        root.write(&paths.podman_containers, REAL_CONTAINERS_JSON);
        let mut names = ContainerNames::new(paths, 16);
        let c = names.resolve(&podman_ref(REAL_ID));
        assert_eq!(c.name.as_deref(), Some("httpd-test"));
        assert_eq!(c.display(), "podman:httpd-test");
        assert_eq!(names.resolve(&podman_ref(ID)).name, None);
    }

    #[test]
    fn malformed_or_missing_metadata_gives_no_name() {
        let root = TempRoot::new();
        let paths = root.paths();
        let mut names = ContainerNames::new(paths.clone(), 16);
        // Nothing on the host at all.
        assert_eq!(names.resolve(&podman_ref(ID)).name, None);
        assert_eq!(names.resolve(&docker_ref(ID)).name, None);

        root.write(&paths.podman_containers, "[{\"id\": \"3f2a");
        let docker = paths.docker_containers.join(ID).join("config.v2.json");
        root.write(&docker, "{\"Name\": 17}");
        let mut names = ContainerNames::new(paths.clone(), 16);
        assert_eq!(names.resolve(&podman_ref(ID)).name, None);
        assert_eq!(names.resolve(&docker_ref(ID)).name, None);

        // A name that does not belong in a label is no name.
        root.write(&paths.podman_containers, &podman_json(&[(ID, "bad\nname")]));
        root.write(&docker, "{\"Name\": \"/\"}");
        let mut names = ContainerNames::new(paths, 16);
        assert_eq!(names.resolve(&podman_ref(ID)).name, None);
        assert_eq!(names.resolve(&docker_ref(ID)).name, None);
    }

    #[test]
    fn docker_names_from_each_config() {
        let root = TempRoot::new();
        let paths = root.paths();
        let config = paths.docker_containers.join(ID).join("config.v2.json");
        root.write(
            &config,
            &format!(
                r#"{{"StreamConfig":{{}},"State":{{"Running":true}},"ID":"{ID}","Name":"/web"}}"#
            ),
        );
        let mut names = ContainerNames::new(paths, 16);
        let c = names.resolve(&docker_ref(ID));
        assert_eq!(c.name.as_deref(), Some("web"));
        assert_eq!(c.display(), "docker:web");
        // A renamed container: docker writes a new file.
        root.write(
            &config,
            &format!(r#"{{"ID":"{ID}","Name":"/web-renamed"}}"#),
        );
        assert_eq!(
            names.resolve(&docker_ref(ID)).name.as_deref(),
            Some("web-renamed")
        );
    }

    #[test]
    fn oversized_metadata_is_not_read() {
        let root = TempRoot::new();
        let paths = root.paths();
        let config = paths.docker_containers.join(ID).join("config.v2.json");
        let padding = " ".repeat(usize::try_from(DOCKER_MAX_BYTES).unwrap_or(usize::MAX));
        root.write(&config, &format!(r#"{{"Name":"/web"}}{padding}"#));
        let mut names = ContainerNames::new(paths, 16);
        assert_eq!(names.resolve(&docker_ref(ID)).name, None);
    }

    #[test]
    fn pods_named_from_the_kubelet_logs() {
        let root = TempRoot::new();
        let paths = root.paths();
        for dir in [
            format!("default_nginx-abc_{UID}"),
            "kube-system_coredns-1_0c9e8f1a-0000-4000-8000-000000000001".to_string(),
            "not-a-pod-dir".to_string(),
            "a_b_c_d".to_string(),
        ] {
            fs::create_dir_all(paths.kubelet_pods.join(&dir))
                .unwrap_or_else(|e| panic!("{dir}: {e}"));
        }
        let mut names = ContainerNames::new(paths, 16);
        let r = ContainerRef::from_cgroup(&format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SYSTEMD}.slice/cri-containerd-{ID}.scope\n"
        ));
        let c = r.map(|r| names.resolve(&r));
        assert_eq!(
            c.as_ref().and_then(|c| c.pod.clone()),
            Some(Pod {
                namespace: Some("default".into()),
                name: Some("nginx-abc".into()),
                uid: UID.to_string(),
            })
        );
        assert_eq!(
            c.map(|c| c.display()).as_deref(),
            Some("k8s:default/nginx-abc")
        );
        // A pod the kubelet's logs do not list keeps its UID only.
        let other = "11111111-2222-3333-4444-555555555555";
        let c = names.resolve(&ContainerRef {
            runtime: Runtime::Cri,
            id: ID.replace('3', "4"),
            pod_uid: Some(other.to_string()),
        });
        assert_eq!(c.display(), format!("k8s:{other}"));
    }

    #[test]
    fn podman_store_is_read_again_only_when_it_changed() {
        let root = TempRoot::new();
        let paths = root.paths();
        let file = paths.podman_containers.clone();
        let other = ID.replace('3', "4");
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        root.write(&file, &podman_json(&[(ID, "aaaa")]));
        set_mtime(&file, t0);
        let mut names = ContainerNames::new(paths, 16);
        assert_eq!(names.resolve(&podman_ref(ID)).name.as_deref(), Some("aaaa"));
        assert_eq!(names.podman.generation, 1);

        // Same size, same inode, same time: not read again, so neither the new name nor the
        // new container is seen.
        root.write(&file, &podman_json(&[(ID, "bbbb")]));
        set_mtime(&file, t0);
        assert_eq!(names.resolve(&podman_ref(ID)).name.as_deref(), Some("aaaa"));
        assert_eq!(names.resolve(&podman_ref(&other)).name, None);
        assert_eq!(names.podman.generation, 1);

        set_mtime(&file, t0 + Duration::from_secs(1));
        assert_eq!(names.resolve(&podman_ref(ID)).name.as_deref(), Some("bbbb"));
        assert_eq!(names.podman.generation, 2);

        // Replaced as podman does it (a new file renamed over the old one).
        let new = file.with_extension("tmp");
        root.write(&new, &podman_json(&[(ID, "bbbb"), (&other, "cccc")]));
        fs::rename(&new, &file).unwrap_or_else(|e| panic!("rename: {e}"));
        assert_eq!(
            names.resolve(&podman_ref(&other)).name.as_deref(),
            Some("cccc")
        );
        assert_eq!(names.podman.generation, 3);

        // Removed: names are forgotten.
        fs::remove_file(&file).unwrap_or_else(|e| panic!("remove: {e}"));
        assert_eq!(names.resolve(&podman_ref(&other)).name, None);
    }

    #[test]
    fn the_cache_is_bounded_and_drops_the_oldest() {
        let root = TempRoot::new();
        let paths = root.paths();
        let ids: Vec<String> = ["a", "b", "c"].iter().map(|c| c.repeat(64)).collect();
        for (id, name) in ids.iter().zip(["one", "two", "three"]) {
            root.write(
                &paths.docker_containers.join(id).join("config.v2.json"),
                &format!(r#"{{"Name":"/{name}"}}"#),
            );
        }
        let mut names = ContainerNames::new(paths, 2);
        for id in &ids {
            assert!(names.resolve(&docker_ref(id)).name.is_some());
        }
        assert_eq!(names.len(), 2);
        assert!(!names.resolved.contains_key(&ids[0]));
        assert!(names.resolved.contains_key(&ids[1]) && names.resolved.contains_key(&ids[2]));
        // Asking again for the dropped one brings it back and drops the next oldest.
        assert_eq!(
            names.resolve(&docker_ref(&ids[0])).name.as_deref(),
            Some("one")
        );
        assert_eq!(names.len(), 2);
        assert!(!names.resolved.contains_key(&ids[1]));
        assert_eq!(names.order.len(), 2);
    }

    #[test]
    fn container_of_a_process() {
        let root = TempRoot::new();
        let paths = root.paths();
        root.write(&paths.proc_root.join("4242/cgroup"), REAL_PODMAN_CGROUP);
        root.write(&paths.proc_root.join("4243/cgroup"), REAL_CONMON_CGROUP);
        root.write(&paths.podman_containers, REAL_CONTAINERS_JSON);
        let mut names = ContainerNames::new(paths, 16);
        let c = container_of_pid(4242, &mut names);
        assert_eq!(
            c,
            Some(Container {
                runtime: Runtime::Podman,
                id: REAL_ID.to_string(),
                name: Some("httpd-test".into()),
                pod: None,
            })
        );
        assert_eq!(container_of_pid(4243, &mut names), None);
        // A process that is gone.
        assert_eq!(container_of_pid(4244, &mut names), None);
    }

    proptest::proptest! {
        #[test]
        fn a_container_scope_is_found_wherever_it_sits(
            above in proptest::collection::vec("[a-z0-9_.@-]{1,20}", 0..4),
            id in "[0-9a-f]{64}",
            prefix in proptest::sample::select(vec![
                ("libpod-", Runtime::Podman),
                ("docker-", Runtime::Docker),
                ("cri-containerd-", Runtime::Containerd),
                ("nerdctl-", Runtime::Containerd),
                ("crio-", Runtime::Crio),
            ]),
            below in proptest::option::of("[a-z]{1,10}"),
        ) {
            let mut path = String::new();
            for part in &above {
                path.push('/');
                path.push_str(part);
            }
            path.push_str(&format!("/{}{id}.scope", prefix.0));
            if let Some(below) = below {
                path.push('/');
                path.push_str(&below);
            }
            let r = ContainerRef::from_cgroup_path(&path);
            proptest::prop_assert_eq!(r.map(|r| (r.runtime, r.id)), Some((prefix.1, id)));
        }

        #[test]
        fn any_cgroup_text_gives_a_well_formed_ref_or_none(text in "(([0-9]{1,2}:[a-z=,]{0,12}:)?(/[a-z0-9_:.@-]{0,70}){0,5}\n){0,4}") {
            if let Some(r) = ContainerRef::from_cgroup(&text) {
                proptest::prop_assert_eq!(container_id(&r.id), Some(r.id.clone()));
                if let Some(uid) = &r.pod_uid {
                    proptest::prop_assert_eq!(normalise_uid(uid), Some(uid.clone()));
                }
            }
        }
    }
}
