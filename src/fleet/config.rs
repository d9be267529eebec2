//! `[fleet]` in `weaver.toml`: where the NATS servers are, who this host is,
//! the buckets, and the credentials, read from files that must be 0600 and
//! ours (no secret lives in `weaver.toml`).
//!
//! ```toml
//! [fleet]
//! url = ["nats://10.0.0.5:4222", "nats://10.0.0.6:4222"]
//! node = "gpu-07"                 # default: the host name
//! token_file = "~/.config/weaver/nats.token"   # or user + password_file
//! bucket = "weaver_config"        # default
//! status_bucket = "weaver_status" # default
//! js_domain = "hub"               # JetStream domain, for a local leaf node
//! inbox_prefix = "_INBOX"         # default
//! ```

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml_edit::{ImDocument, Item, Value};

use super::client::{Auth, Options, Url};
use super::kv::{check_bucket, Bucket};

#[derive(Debug, Clone, PartialEq)]
pub struct FleetConfig {
    pub urls: Vec<Url>,
    pub node: String,
    pub token_file: Option<PathBuf>,
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    pub bucket: String,
    pub status_bucket: String,
    pub js_domain: Option<String>,
    pub inbox_prefix: String,
    /// How often this host's status entries are published again while
    /// nothing changes (their liveness: an entry older than three of its
    /// intervals is stale, its host gone or cut off).
    pub status_every: Duration,
}

const KEYS: &[&str] = &[
    "url",
    "node",
    "token_file",
    "user",
    "password_file",
    "bucket",
    "status_bucket",
    "js_domain",
    "inbox_prefix",
    "status_every",
];

/// The host name (the default `node`).
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates
    // within it (or truncates, which the position search handles).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name: String = String::from_utf8_lossy(&buf[..end])
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .collect();
    if rc != 0 || name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

fn expand(p: &str) -> PathBuf {
    match p.strip_prefix("~/") {
        Some(rest) => {
            std::env::var_os("HOME").map_or_else(|| PathBuf::from(p), |h| Path::new(&h).join(rest))
        }
        None => PathBuf::from(p),
    }
}

/// `[fleet]` of a `weaver.toml` text: `None` without the table. Errors say
/// which key is wrong and how to write it.
pub fn parse(text: &str) -> Result<Option<FleetConfig>, String> {
    let doc =
        ImDocument::parse(text).map_err(|e| format!("invalid TOML: {}", e.message().trim()))?;
    let Some(item) = doc.as_table().get("fleet") else { return Ok(None) };
    let Some(t) = item.as_table_like() else {
        return Err("[fleet] must be a table".into());
    };
    for (k, _) in t.iter() {
        if !KEYS.contains(&k) {
            return Err(format!("unknown key {k:?} in [fleet] (known: {})", KEYS.join(", ")));
        }
    }
    let string = |k: &str| -> Result<Option<String>, String> {
        match t.get(k) {
            None => Ok(None),
            Some(Item::Value(Value::String(s))) => Ok(Some(s.value().clone())),
            Some(_) => Err(format!("[fleet] {k} must be a string")),
        }
    };
    let urls: Vec<String> = match t.get("url") {
        None => return Err("[fleet] needs url = \"nats://HOST:PORT\" (or a list of them)".into()),
        Some(Item::Value(Value::String(s))) => vec![s.value().clone()],
        Some(Item::Value(Value::Array(a))) => a
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or("[fleet] url: a list of strings"))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("[fleet] url must be a string or a list of strings".into()),
    };
    if urls.is_empty() {
        return Err("[fleet] url: give at least one nats://HOST:PORT".into());
    }
    let urls = urls.iter().map(|u| Url::parse(u)).collect::<Result<Vec<_>, _>>()?;
    let node = string("node")?.unwrap_or_else(host_name);
    if node.is_empty() || !node.bytes().all(|c| c.is_ascii_alphanumeric() || b"-_".contains(&c)) {
        return Err(format!("[fleet] node {node:?}: use letters, digits, '-' and '_'"));
    }
    let bucket = string("bucket")?.unwrap_or_else(|| "weaver_config".into());
    let status_bucket = string("status_bucket")?.unwrap_or_else(|| "weaver_status".into());
    check_bucket(&bucket).map_err(|e| format!("[fleet] bucket: {e}"))?;
    check_bucket(&status_bucket).map_err(|e| format!("[fleet] status_bucket: {e}"))?;
    if bucket == status_bucket {
        return Err("[fleet] bucket and status_bucket must differ".into());
    }
    let js_domain = string("js_domain")?;
    if let Some(d) = &js_domain {
        check_bucket(d)
            .map_err(|_| format!("[fleet] js_domain {d:?}: use letters, digits, '_', '-'"))?;
    }
    let inbox_prefix = string("inbox_prefix")?.unwrap_or_else(|| "_INBOX".into());
    super::proto::check_subject(&inbox_prefix).map_err(|e| format!("[fleet] inbox_prefix: {e}"))?;
    let status_every = match t.get("status_every") {
        None => Duration::from_secs(30),
        Some(Item::Value(Value::Integer(i))) if (1..=3600).contains(i.value()) => {
            Duration::from_secs(*i.value() as u64)
        }
        Some(_) => return Err("[fleet] status_every: whole seconds from 1 to 3600".into()),
    };
    let token_file = string("token_file")?.map(|p| expand(&p));
    let user = string("user")?;
    let password_file = string("password_file")?.map(|p| expand(&p));
    match (&token_file, &user, &password_file) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            return Err("[fleet]: give token_file, or user and password_file, not both".into())
        }
        (None, Some(_), None) => return Err("[fleet] user needs password_file".into()),
        (None, None, Some(_)) => return Err("[fleet] password_file needs user".into()),
        _ => {}
    }
    Ok(Some(FleetConfig {
        urls,
        node,
        token_file,
        user,
        password_file,
        bucket,
        status_bucket,
        js_domain,
        inbox_prefix,
        status_every,
    }))
}

/// `[fleet]` of the file at `path` (`None`: no file or no table).
pub fn load(path: Option<&Path>) -> Result<Option<FleetConfig>, String> {
    let Some(path) = path else { return Ok(None) };
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// A secret from a file that is ours and readable by us alone; the first
/// line, without its newline.
pub fn read_secret(path: &Path) -> Result<String, String> {
    let md = std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if md.uid() != nix::unistd::getuid().as_raw() {
        return Err(format!(
            "{} is not owned by this user: refusing a secret others control",
            path.display()
        ));
    }
    if md.mode() & 0o077 != 0 {
        return Err(format!(
            "{} is readable by others (mode {:o}): chmod 600 {}",
            path.display(),
            md.mode() & 0o777,
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let secret = text.lines().next().unwrap_or_default().trim().to_string();
    if secret.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(secret)
}

impl FleetConfig {
    pub fn auth(&self) -> Result<Auth, String> {
        Ok(match (&self.token_file, &self.user, &self.password_file) {
            (Some(t), _, _) => Auth::Token(read_secret(t)?),
            (None, Some(u), Some(p)) => {
                Auth::UserPassword { user: u.clone(), password: read_secret(p)? }
            }
            _ => Auth::None,
        })
    }

    pub fn client_options(&self) -> Result<Options, String> {
        let mut o = Options::new(self.urls.clone());
        o.name = format!("weaver {}", self.node);
        o.auth = self.auth()?;
        o.inbox_prefix = self.inbox_prefix.clone();
        o.ping_interval = Duration::from_secs(2);
        o.max_pings_out = 2;
        Ok(o)
    }

    pub fn config_bucket(&self) -> Bucket {
        Bucket::new(&self.bucket, self.js_domain.as_deref()).expect("checked when parsed")
    }

    pub fn status_bucket(&self) -> Bucket {
        Bucket::new(&self.status_bucket, self.js_domain.as_deref()).expect("checked when parsed")
    }

    pub fn server_list(&self) -> String {
        self.urls.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn parses_with_defaults_and_clear_errors() {
        assert_eq!(parse("[compute]\n").unwrap(), None);
        let c =
            parse("[fleet]\nurl = \"nats://10.0.0.1:4222\"\nnode = \"gpu-1\"\n").unwrap().unwrap();
        assert_eq!(c.urls, vec![Url { host: "10.0.0.1".into(), port: 4222 }]);
        assert_eq!(
            (c.node.as_str(), c.bucket.as_str(), c.status_bucket.as_str()),
            ("gpu-1", "weaver_config", "weaver_status")
        );
        let c = parse("[fleet]\nurl = [\"a:1\", \"b:2\"]\njs_domain = \"hub\"\n").unwrap().unwrap();
        assert_eq!(c.urls.len(), 2);
        assert_eq!(c.config_bucket().api("INFO"), "$JS.hub.API.INFO");
        assert_eq!(c.status_every, Duration::from_secs(30));
        let c = parse("[fleet]\nurl = \"a:1\"\nstatus_every = 2\n").unwrap().unwrap();
        assert_eq!(c.status_every, Duration::from_secs(2));
        for (text, want) in [
            ("[fleet]\n", "needs url"),
            ("[fleet]\nurl = \"http://x\"\n", "only nats://"),
            ("[fleet]\nurl = \"a:1\"\nnode = \"a b\"\n", "node"),
            ("[fleet]\nurl = \"a:1\"\npassword = \"x\"\n", "unknown key \"password\""),
            ("[fleet]\nurl = \"a:1\"\nuser = \"u\"\n", "needs password_file"),
            ("[fleet]\nurl = \"a:1\"\ntoken_file = \"t\"\nuser = \"u\"\n", "not both"),
            ("[fleet]\nurl = \"a:1\"\nbucket = \"a.b\"\n", "bucket"),
            ("[fleet]\nurl = \"a:1\"\nstatus_every = 0\n", "status_every"),
            ("[fleet]\nurl = \"a:1\"\nstatus_every = \"30s\"\n", "status_every"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn secrets_only_from_private_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("tok");
        std::fs::write(&p, "s3cret\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_secret(&p).unwrap_err();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_secret(&p).unwrap(), "s3cret");
        assert!(read_secret(&d.path().join("none")).unwrap_err().contains("cannot read"));
    }
}
