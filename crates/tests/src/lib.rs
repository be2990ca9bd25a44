//! Nothing to use: this package holds the workspace's integration tests (`tests/it`), one
//! binary for all crates, because every test binary links burn.
