//! `weaver.toml`: the processes weaver supervises besides compute.
//!
//! Parsed with spans, validated with every error collected (each one with
//! file, line and column), then expanded into concrete instances. No I/O
//! except [`load`] (reads one file) and [`locate`] (reads the environment
//! and checks that a file exists).
//!
//! | file | job |
//! |---|---|
//! | `model.rs` | the types: [`Config`], [`ProcessSpec`], [`InstanceSpec`] and their parts, with their defaults |
//! | `parse.rs` | [`locate`], [`load`], [`parse`]: the TOML walked with spans, every error with file:line:col |
//! | `expand.rs` | [`Config::expand`]: instances, `{instance}`, GPUs, `WEAVER_PROCESS` / `WEAVER_INSTANCE` |
//!
//! Every key, with its default:
//!
//! ```toml
//! [compute]
//! command = ["/opt/weaver/compute-daemon"]  # default: the bundled daemon
//! env = { RUST_LOG = "info" }
//! workers = 4
//! ping_interval = "5s"                      # PING a connected compute; 0: never
//! ping_timeout = "5s"                       # no PONG in time: hung, killed, restarted
//! scheduling = "batch"                      # SCHED_BATCH; default "normal" (SCHED_OTHER)
//! max_restarts = 0                          # + the other restart fields
//!
//! [[process]]
//! name = "db"                     # required, [A-Za-z0-9_-], unique
//! command = ["postgres", "-D", "/var/lib/pg"]   # argv, no shell
//! priority = -10                  # start order: lower first; stop reversed
//! stop_signal = "INT"             # SIGINT; default SIGTERM
//! stop_timeout = "10s"            # then SIGKILL; default 2s
//! [process.detectors.ready]
//! command = ["pg_isready"]        # or pid_file = "..." or log_pattern = "..."
//! interval = "500ms"              # default 1s
//! timeout = "1m"                  # default 30s
//!
//! [[process]]
//! name = "migrate"
//! command = "psql -f schema.sql && echo done"
//! shell = true                    # command is one string for /bin/sh -c
//! after = [{ name = "db", condition = "ready" }]
//! auto_restart = false            # a one-shot job
//!
//! [[process]]
//! name = "worker"
//! command = ["python", "worker.py", "--shard", "{instance}"]
//! work_dir = "/srv/worker"
//! env = { LOG = "/tmp/worker-{instance}.log" }
//! instances = 4                   # worker.0 .. worker.3
//! gpus = [0, 1]                   # worker.0 -> "0", worker.1 -> "1", worker.2 -> "0", ...
//! after = ["db", { name = "migrate", condition = "exited_ok" }]
//! retry_count = 3                 # failed starts retried ...
//! retry_interval = "1s"           # ... this far apart
//! start_duration = "2s"           # up this long = started; default 1s
//! restart_interval = "1s"         # first restart delay; default 1s
//! backoff_factor = 2.0            # default 2.0
//! backoff_cap = "30s"             # default 30s
//! backoff_jitter = 0.1            # +-10 %; default 0.1
//! stable_after = "10s"            # a run this long resets the backoff
//! max_restarts = 10               # 0 = never give up; default 10
//! output = { ring_bytes = 1048576, file = "/tmp/worker-{instance}.out", max_file_bytes = 10485760, keep_files = 3 }
//! stdin = "pipe"                  # weaver holds the write end (send, attach); default "null": /dev/null
//! [process.params]               # live configuration defaults (weavelets): any
//! lr = 0.01                       # TOML values, as JSON; names [A-Za-z0-9_.-]
//! optimizer = "adam"
//! [process.hooks.pre_start]
//! command = ["./fetch-model.sh"]
//! timeout = "5m"                  # default 30s
//! failure_mode = "retry"          # ignore | fail | retry
//! run_mode = "blocking"           # blocking | async
//!
//! [[process]]
//! name = "legacy"
//! command = ["legacyd", "--daemonize"]
//! detached = true                 # forks away; tracked through its pid file
//! pid_file = "/run/user/1000/legacyd.pid"
//! detectors = { alive = { pid_file = "/run/user/1000/legacyd.pid", interval = "2s" } }
//!
//! [[job]]                         # one-shot, for `weaver run` (run/, daemon/runner.rs)
//! name = "convert"                # unique among jobs and processes
//! command = "python convert.py"   # argv, or a string with shell = true
//! shell = true
//! after = ["fetch"]               # jobs that must pass first
//! allow_failure = false           # true: its failure skips and fails nothing
//! timeout = "10m"                 # then stopped, and failed with code 124
//! gpus = [0, 1]                   # CUDA_VISIBLE_DEVICES="0,1"
//! stop_signal = "TERM"            # and stop_timeout, work_dir, env, output: as for processes
//!
//! [[job]]
//! name = "fetch"
//! command = ["./fetch-weights.sh"]
//! ```
//!
//! Durations are strings of a number and a unit (`ms`, `s`, `m`, `h`), with
//! an optional fraction and optionally several in a row (`"500ms"`, `"2s"`,
//! `"1.5s"`, `"1m30s"`), or integers counting milliseconds (`1500`).
//!
//! Instances: `instances = N` (default 1) makes N copies; with N > 1 they
//! are named `name.0` .. `name.N-1` (with N = 1 the name stays `name`).
//! `{instance}` (the index) is replaced in every argument, env value,
//! `work_dir`, `pid_file`, `output.file`, and in detector and hook commands,
//! env values and work dirs. Paths that each instance writes (`pid_file`,
//! `output.file`) must contain `{instance}` when N > 1.
//!
//! GPUs: `gpus` is a list whose entries are a device number or a list of
//! device numbers. Instance i gets entry `i % len` (so entries are reused
//! round-robin when there are more instances than entries), written to
//! `CUDA_VISIBLE_DEVICES` joined with commas: `gpus = [[0, 1], [2, 3]]` gives
//! instance 0 `"0,1"` and instance 1 `"2,3"`.
//!
//! Every process also sees `WEAVER_PROCESS` (its `name`) and
//! `WEAVER_INSTANCE` (its index) in its environment, and so do its hooks and
//! probes.
//!
//! `[process.params]` is the default document of the process's weavelets
//! (revision 0 of the target named like the process; `weaver config set`
//! makes later ones). Changing it and reloading restarts nothing. Every
//! instance also finds the weavelet socket in `WEAVER_WEAVELET_SOCKET`.
//!
//! `stdin = "pipe"` gives each run of each instance a fresh pipe as its
//! stdin, whose write end the daemon holds (`weaver send`, `weaver attach`);
//! not with `detached` (the process that stays is not weaver's child).

mod expand;
mod model;
mod parse;

pub use model::{
    AliveCheck, AliveDetector, ComputeSpec, Condition, Config, Dependency, FailureMode, HookKind,
    HookSpec, Hooks, HttpSpec, InstanceSpec, OutputSpec, ProcessSpec, ReadyCheck, ReadyProbe,
    RestartPolicy, RunMode, Scheduling, StartPolicy, StdinMode,
};
pub(crate) use parse::{did_you_mean, suggest};
pub use parse::{load, locate, parse, ConfigError, ConfigErrors};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_is_valid() {
        let source = include_str!("mod.rs");
        let mut example = String::new();
        let mut inside = false;
        for line in source.lines().map_while(|l| l.strip_prefix("//!")) {
            let line = line.strip_prefix(' ').unwrap_or(line);
            match (inside, line) {
                (false, "```toml") => inside = true,
                (true, "```") => break,
                (true, _) => example.push_str(&format!("{line}\n")),
                _ => {}
            }
        }
        let c = parse(&example, "example.toml").unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<String> = c.expand().into_iter().map(|i| i.name).collect();
        assert_eq!(
            names,
            ["db", "migrate", "worker.0", "worker.1", "worker.2", "worker.3", "legacy"]
        );
        assert_eq!(c.compute.workers, Some(4));
        let jobs: Vec<&str> = c.jobs.iter().map(|j| j.name.as_str()).collect();
        assert_eq!(jobs, ["convert", "fetch"]);
    }

    #[test]
    fn the_readme_job_example_is_valid() {
        let readme = include_str!("../../../README.md");
        let at = readme.find("## Jobs").expect("README has a Jobs section");
        let start = at + readme[at..].find("```toml\n").expect("with an example") + 8;
        let len = readme[start..].find("```").unwrap();
        let c = parse(&readme[start..start + len], "README.md").unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<&str> = c.jobs.iter().map(|j| j.name.as_str()).collect();
        assert_eq!(names, ["fetch", "convert", "smoke"]);
        assert!(c.jobs[2].allow_failure);
    }

    #[test]
    fn the_readme_example_is_valid() {
        let readme = include_str!("../../../README.md");
        let start = readme.find("```toml\n").expect("README has a weaver.toml example") + 8;
        let len = readme[start..].find("```").unwrap();
        let c = parse(&readme[start..start + len], "README.md").unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<String> = c.expand().into_iter().map(|i| i.name).collect();
        assert_eq!(names, ["db", "migrate", "trainer.0", "trainer.1", "exporter"]);
        assert_eq!(c.compute.workers, Some(4));
    }
}
