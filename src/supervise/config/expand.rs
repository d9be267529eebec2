//! From a `[[process]]` to its concrete instances: names (`name.i`),
//! `{instance}` replaced, the shell applied, GPUs chosen round-robin, and
//! the environment every instance, hook and probe sees (`WEAVER_PROCESS`,
//! `WEAVER_INSTANCE`, `CUDA_VISIBLE_DEVICES`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::model::{
    AliveCheck, AliveDetector, Config, HookKind, HookSpec, Hooks, InstanceSpec, OutputSpec,
    ProcessSpec, ReadyCheck, ReadyProbe,
};

/// Replaced by the instance index.
pub(super) const INSTANCE: &str = "{instance}";
/// The `[[process]]` name, in every instance's environment.
const ENV_PROCESS: &str = "WEAVER_PROCESS";
/// The instance index, in every instance's environment.
const ENV_INSTANCE: &str = "WEAVER_INSTANCE";
/// The devices an instance is pinned to (`gpus`), joined with commas.
const ENV_GPUS: &str = "CUDA_VISIBLE_DEVICES";
/// What runs a `shell = true` command: `SHELL -c script`.
const SHELL: &str = "/bin/sh";

fn subst(s: &str, index: u32) -> String {
    s.replace(INSTANCE, &index.to_string())
}

fn subst_path(p: &Path, index: u32) -> PathBuf {
    PathBuf::from(subst(&p.to_string_lossy(), index))
}

fn subst_all(v: &[String], index: u32) -> Vec<String> {
    v.iter().map(|s| subst(s, index)).collect()
}

impl ProcessSpec {
    /// The name of instance `index`.
    fn instance_name(&self, index: u32) -> String {
        if self.instances > 1 {
            format!("{}.{index}", self.name)
        } else {
            self.name.clone()
        }
    }

    /// The devices of instance `index`: entry `index % len` of `gpus`.
    fn gpus_for(&self, index: u32) -> Option<Vec<u32>> {
        if self.gpus.is_empty() {
            return None;
        }
        Some(self.gpus[index as usize % self.gpus.len()].clone())
    }

    /// Instance `index` made concrete.
    fn instance(&self, index: u32) -> InstanceSpec {
        let argv = if self.shell {
            vec![SHELL.into(), "-c".into(), subst(&self.command[0], index)]
        } else {
            subst_all(&self.command, index)
        };
        let mut env: BTreeMap<String, String> =
            self.env.iter().map(|(k, v)| (k.clone(), subst(v, index))).collect();
        env.insert(ENV_PROCESS.into(), self.name.clone());
        env.insert(ENV_INSTANCE.into(), index.to_string());
        let gpus = self.gpus_for(index);
        if let Some(g) = &gpus {
            let list: Vec<String> = g.iter().map(u32::to_string).collect();
            env.insert(ENV_GPUS.into(), list.join(","));
        }
        let work_dir = self.work_dir.as_deref().map(|p| subst_path(p, index));
        let mut hooks = Hooks::default();
        for kind in HookKind::ALL {
            if let Some(h) = self.hooks.get(kind) {
                let mut henv = env.clone();
                henv.extend(h.env.iter().map(|(k, v)| (k.clone(), subst(v, index))));
                *hooks.get_mut(kind) = Some(HookSpec {
                    command: subst_all(&h.command, index),
                    work_dir: h
                        .work_dir
                        .as_deref()
                        .map(|p| subst_path(p, index))
                        .or(work_dir.clone()),
                    env: henv,
                    ..h.clone()
                });
            }
        }
        let alive = self.alive.as_ref().map(|a| AliveDetector {
            check: match &a.check {
                AliveCheck::PidFile(p) => AliveCheck::PidFile(subst_path(p, index)),
                AliveCheck::Command(c) => AliveCheck::Command(subst_all(c, index)),
            },
            interval: a.interval,
        });
        let ready = self.ready.as_ref().map(|r| ReadyProbe {
            check: match &r.check {
                ReadyCheck::Command(c) => ReadyCheck::Command(subst_all(c, index)),
                ReadyCheck::PidFile(p) => ReadyCheck::PidFile(subst_path(p, index)),
                ReadyCheck::LogPattern(s) => ReadyCheck::LogPattern(s.clone()),
            },
            ..r.clone()
        });
        InstanceSpec {
            name: self.instance_name(index),
            process: self.name.clone(),
            index,
            argv,
            work_dir,
            env,
            pid_file: self.pid_file.as_deref().map(|p| subst_path(p, index)),
            gpus,
            priority: self.priority,
            after: self.after.clone(),
            start: self.start,
            restart: self.restart,
            detached: self.detached,
            alive,
            ready,
            stop_signal: self.stop_signal,
            stop_timeout: self.stop_timeout,
            output: OutputSpec {
                file: self.output.file.as_deref().map(|p| subst_path(p, index)),
                ..self.output.clone()
            },
            hooks,
            stdin: self.stdin,
        }
    }
}

impl Config {
    /// Every instance of every process, in declaration order.
    pub fn expand(&self) -> Vec<InstanceSpec> {
        self.processes.iter().flat_map(|p| (0..p.instances).map(move |i| p.instance(i))).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use nix::sys::signal::Signal;

    use super::*;
    use crate::supervise::config::model::{FailureMode, RestartPolicy, RunMode, StartPolicy};

    /// A `[[process]]` with every optional key left out.
    fn process(name: &str, command: &[&str]) -> ProcessSpec {
        ProcessSpec {
            name: name.into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            shell: false,
            work_dir: None,
            env: BTreeMap::new(),
            pid_file: None,
            priority: 0,
            after: Vec::new(),
            start: StartPolicy::default(),
            restart: RestartPolicy::PROCESS,
            instances: 1,
            gpus: Vec::new(),
            detached: false,
            alive: None,
            ready: None,
            stop_signal: Signal::SIGTERM,
            stop_timeout: Duration::from_secs(2),
            output: OutputSpec::default(),
            hooks: Hooks::default(),
            params: Default::default(),
            stdin: Default::default(),
        }
    }

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn instances_are_expanded_with_their_index_and_gpus() {
        let db = process("db", &["postgres", "-D", "/data"]);
        let mut web = process("web", &["web", "--port", "80{instance}"]);
        web.work_dir = Some("/srv/{instance}".into());
        web.env = env(&[("LOG", "/tmp/web-{instance}.log"), ("PLAIN", "x")]);
        web.instances = 3;
        web.gpus = vec![vec![0, 1], vec![2, 3]];
        web.output.file = Some("/tmp/web-{instance}.out".into());
        web.hooks.pre_start = Some(HookSpec {
            command: vec!["fetch".into(), "{instance}".into()],
            work_dir: None,
            env: env(&[("H", "h{instance}")]),
            timeout: Duration::from_secs(300),
            failure_mode: FailureMode::Retry,
            run_mode: RunMode::Async,
        });
        let mut migrate = process("migrate", &["psql -f schema.sql && echo {instance}"]);
        migrate.shell = true;
        let mut legacy = process("legacy", &["legacyd"]);
        legacy.gpus = vec![vec![1], vec![0]];
        let c = Config { processes: vec![db, web, migrate, legacy], ..Config::default() };

        let all = c.expand();
        let names: Vec<&str> = all.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["db", "web.0", "web.1", "web.2", "migrate", "legacy"]);
        let web2 = &all[3];
        assert_eq!((web2.process.as_str(), web2.index), ("web", 2));
        assert_eq!(web2.argv, ["web", "--port", "802"]);
        assert_eq!(web2.work_dir.as_deref(), Some(Path::new("/srv/2")));
        assert_eq!(web2.env["LOG"], "/tmp/web-2.log");
        assert_eq!(web2.env["PLAIN"], "x");
        assert_eq!(web2.env["WEAVER_PROCESS"], "web");
        assert_eq!(web2.env["WEAVER_INSTANCE"], "2");
        // gpus = [[0, 1], [2, 3]]: instance i gets entry i % 2.
        assert_eq!(all[1].env["CUDA_VISIBLE_DEVICES"], "0,1");
        assert_eq!(all[2].env["CUDA_VISIBLE_DEVICES"], "2,3");
        assert_eq!(web2.env["CUDA_VISIBLE_DEVICES"], "0,1");
        assert_eq!(web2.gpus.as_deref(), Some(&[0, 1][..]));
        assert_eq!(web2.output.file.as_deref(), Some(Path::new("/tmp/web-2.out")));
        let pre = web2.hooks.pre_start.as_ref().unwrap();
        assert_eq!(pre.command, ["fetch", "2"]);
        assert_eq!(pre.env["H"], "h2");
        assert_eq!(pre.env["LOG"], "/tmp/web-2.log", "hooks see the instance's env");
        assert_eq!(pre.work_dir.as_deref(), Some(Path::new("/srv/2")), "and its work_dir");
        // A single instance keeps its name; a shell command is wrapped.
        let migrate = &all[4];
        assert_eq!(migrate.argv, ["/bin/sh", "-c", "psql -f schema.sql && echo 0"]);
        assert_eq!(migrate.env["WEAVER_INSTANCE"], "0");
        assert!(!all[0].env.contains_key("CUDA_VISIBLE_DEVICES"));
        // gpus = [1, 0]: a plain list pins one device per instance.
        assert_eq!(all[5].env["CUDA_VISIBLE_DEVICES"], "1");
    }

    #[test]
    fn detectors_are_expanded_per_instance() {
        let mut w = process("w", &["w"]);
        w.instances = 2;
        w.pid_file = Some("/run/w-{instance}.pid".into());
        w.alive = Some(AliveDetector {
            check: AliveCheck::PidFile("/run/w-{instance}.pid".into()),
            interval: Duration::from_secs(1),
        });
        w.ready = Some(ReadyProbe {
            check: ReadyCheck::Command(vec!["probe".into(), "{instance}".into()]),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(30),
        });
        let w1 = w.instance(1);
        assert_eq!(w1.pid_file.as_deref(), Some(Path::new("/run/w-1.pid")));
        assert_eq!(w1.alive.unwrap().check, AliveCheck::PidFile("/run/w-1.pid".into()));
        assert_eq!(w1.ready.unwrap().check, ReadyCheck::Command(vec!["probe".into(), "1".into()]));
    }
}
