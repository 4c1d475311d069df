//! Makes the versions of sqlx and tokio-postgres locked in Cargo.lock known to the binaries
//! (SQLX_VERSION, TOKIO_POSTGRES_VERSION), so that the report names what was tested.

fn main() {
    println!("cargo:rerun-if-changed=Cargo.lock");
    let lock = std::fs::read_to_string("Cargo.lock").unwrap_or_default();
    for (krate, var) in [
        ("sqlx", "SQLX_VERSION"),
        ("tokio-postgres", "TOKIO_POSTGRES_VERSION"),
    ] {
        let name = format!("name = \"{krate}\"");
        let version = lock
            .split("[[package]]")
            .find(|p| p.lines().any(|l| l.trim() == name))
            .and_then(|p| p.lines().find_map(|l| l.trim().strip_prefix("version = ")))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_else(|| "unknown".into());
        println!("cargo:rustc-env={var}={version}");
    }
}
