//! The live terminal view of `teardown top`.
