//! Configuration types, loadable from TOML, YAML or JSON files.
