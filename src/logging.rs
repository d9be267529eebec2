//! Daemon logging: env_logger filtered by WEAVER_LOG (or RUST_LOG), info by
//! default, with millisecond timestamps, to stderr (the log file when
//! detached).

pub fn init() {
    let env = env_logger::Env::new()
        .filter_or("WEAVER_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()));
    let _ = env_logger::Builder::from_env(env).format_timestamp_millis().try_init();
}
