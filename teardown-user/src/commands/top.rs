//! `teardown top`.
