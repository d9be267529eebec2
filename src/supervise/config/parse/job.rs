//! `[[job]]` tables: one-shot jobs for `weaver run`. Read with the same
//! parser as `[[process]]` (every error with file:line:col); checked
//! across the file: unique names (shared with processes), known `after`
//! names, no cycles.

use std::collections::HashMap;

use toml_edit::Value;

use super::{
    did_you_mean, parse_signal, span_start, suggest, valid_name, Cycles, Declared, Parser, Tbl,
    OUTPUT_KEYS,
};
use crate::run::JobSpec;
use crate::supervise::config::{Config, OutputSpec};

const JOB_KEYS: &[&str] = &[
    "name",
    "command",
    "shell",
    "work_dir",
    "env",
    "after",
    "allow_failure",
    "timeout",
    "gpus",
    "output",
    "stop_signal",
    "stop_timeout",
    "stdin",
];

/// What runs a `shell = true` job: `/bin/sh -c script`.
const SHELL: &str = "/bin/sh";

impl Parser<'_> {
    /// Every `[[job]]`, into `config.jobs`; `processes` tells where each
    /// process was declared (a job may not take a process's name).
    pub(super) fn jobs(&mut self, top: Tbl<'_>, config: &mut Config, processes: &[Declared]) {
        let (jobs, declared) = self.declared(top, "job", Self::job);
        config.jobs = jobs;
        self.check_jobs(config, processes, &declared);
    }

    /// One `[[job]]`; also where each `after` entry and the name are.
    fn job(&mut self, tbl: Tbl<'_>) -> (JobSpec, Vec<usize>, usize) {
        self.check_keys(tbl, &[JOB_KEYS]);
        let name_at = self.field(tbl, "name").map_or(tbl.at, |f| f.at);
        let name = match self.string(tbl, "name") {
            Some(n) if valid_name(&n) => n,
            Some(n) => {
                self.error(
                    Some(name_at),
                    format!("bad job name \"{n}\": use letters, digits, '_' and '-' only"),
                );
                n
            }
            None => {
                if self.field(tbl, "name").is_none() {
                    self.error(Some(tbl.at), format!("{} has no name", tbl.what));
                }
                String::new()
            }
        };
        let shell = self.boolean(tbl, "shell").unwrap_or(false);
        let mut argv = self.command(tbl, shell);
        if shell && !argv.is_empty() {
            argv = vec![SHELL.into(), "-c".into(), argv.remove(0)];
        }
        let (after, after_at) = self.job_after(tbl);
        let timeout = match (self.field(tbl, "timeout"), self.duration(tbl, "timeout")) {
            (Some(f), Some(d)) if d.is_zero() => {
                self.invalid(f, "must be more than 0 (leave timeout out for none)");
                None
            }
            (_, d) => d,
        };
        let stop_signal = self.field(tbl, "stop_signal").and_then(|f| {
            let s = self.string(tbl, "stop_signal")?;
            parse_signal(&s).map_err(|e| self.invalid(f, e)).ok()
        });
        let gpus = self.field(tbl, "gpus").map(|_| self.gpus(tbl).concat());
        let mut env = self.env(tbl, "env");
        if let Some(g) = &gpus {
            let list: Vec<String> = g.iter().map(u32::to_string).collect();
            env.insert("CUDA_VISIBLE_DEVICES".into(), list.join(","));
        }
        let mut output =
            OutputSpec { ring_bytes: JobSpec::DEFAULT_RING_BYTES, ..OutputSpec::default() };
        let out_what = format!("{} output", tbl.what);
        if let Some(o) = self.sub(tbl, "output", &out_what) {
            let given = o.t.contains_key("ring_bytes");
            output = self.output(o);
            if !given {
                output.ring_bytes = JobSpec::DEFAULT_RING_BYTES;
            }
        }
        debug_assert!(OUTPUT_KEYS.contains(&"ring_bytes"));
        let spec = JobSpec {
            name,
            argv,
            work_dir: self.path(tbl, "work_dir"),
            env,
            after,
            allow_failure: self.boolean(tbl, "allow_failure").unwrap_or(false),
            timeout,
            gpus,
            output,
            stop_signal: stop_signal.unwrap_or(JobSpec::DEFAULT_STOP_SIGNAL),
            stop_timeout: self
                .duration(tbl, "stop_timeout")
                .unwrap_or(JobSpec::DEFAULT_STOP_TIMEOUT),
            stdin: self.stdin(tbl),
        };
        (spec, after_at, name_at)
    }

    /// `after = ["fetch", "convert"]`: job names.
    fn job_after(&mut self, tbl: Tbl<'_>) -> (Vec<String>, Vec<usize>) {
        let (mut names, mut ats) = (Vec::new(), Vec::new());
        let Some(f) = self.field(tbl, "after") else { return (names, ats) };
        let Some(arr) = f.value().and_then(Value::as_array) else {
            self.wrong_type(f, "an array of job names");
            return (names, ats);
        };
        for v in arr.iter() {
            let at = span_start(v.span()).unwrap_or(f.at);
            match v.as_str() {
                Some(s) => {
                    names.push(s.to_string());
                    ats.push(at);
                }
                None => {
                    let found = v.type_name();
                    self.error(
                        Some(at),
                        format!("after in {} must hold job names, not {found}", f.what),
                    );
                }
            }
        }
        (names, ats)
    }

    /// Unique names (among jobs and processes), known `after` names, no
    /// cycles.
    fn check_jobs(&mut self, config: &Config, processes: &[Declared], declared: &[Declared]) {
        let process_at: HashMap<&str, usize> = config
            .processes
            .iter()
            .zip(processes)
            .filter(|(p, _)| !p.name.is_empty())
            .map(|(p, d)| (p.name.as_str(), d.at))
            .collect();
        let mut first: HashMap<&str, usize> = HashMap::new();
        for (i, j) in config.jobs.iter().enumerate() {
            if j.name.is_empty() {
                continue;
            }
            if let Some(&at) = process_at.get(j.name.as_str()) {
                let (line, _) = self.position(at);
                self.error(
                    Some(declared[i].name_at),
                    format!(
                        "job name \"{}\" is taken by the [[process]] on line {line}: \
                         processes and jobs share one namespace (rename one)",
                        j.name
                    ),
                );
            }
            if let Some(&k) = first.get(j.name.as_str()) {
                let (line, _) = self.position(declared[k].at);
                self.error(
                    Some(declared[i].name_at),
                    format!("duplicate job name \"{}\" (first declared on line {line})", j.name),
                );
            } else {
                first.insert(&j.name, i);
            }
        }
        let mut names: Vec<&str> = first.keys().copied().collect();
        names.sort_unstable();
        let mut waits = vec![Vec::new(); config.jobs.len()];
        for (i, j) in config.jobs.iter().enumerate() {
            for (dep, &at) in j.after.iter().zip(&declared[i].after_at) {
                if let Some(&k) = first.get(dep.as_str()) {
                    waits[i].push(k);
                    continue;
                }
                let why = if process_at.contains_key(dep.as_str()) {
                    format!(
                        "{} runs after \"{dep}\", which is a [[process]], not a job: `after` \
                         of a job names jobs only",
                        declared[i].what
                    )
                } else {
                    let hint = suggest(dep, names.iter().copied());
                    format!(
                        "{} runs after unknown job \"{dep}\"{}",
                        declared[i].what,
                        did_you_mean(hint)
                    )
                };
                self.error(Some(at), why);
            }
        }
        let names: Vec<&str> = config.jobs.iter().map(|j| j.name.as_str()).collect();
        let after: Vec<Vec<&str>> =
            config.jobs.iter().map(|j| j.after.iter().map(String::as_str).collect()).collect();
        let cycles = Cycles { waits: &waits, names: &names, after: &after, first: &first };
        self.report_cycles(cycles, declared, "job cycle");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::supervise::config::parse;

    fn errors(text: &str) -> Vec<String> {
        parse(text, "weaver.toml").unwrap_err().0.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn jobs_parse_with_every_key() {
        let text = r#"
[[job]]
name = "fetch"
command = ["curl", "-o", "w.bin", "http://x"]
work_dir = "/srv"
env = { A = "1" }
timeout = "5m"
gpus = [0, 1]
stop_signal = "INT"
stop_timeout = "3s"
output = { file = "/tmp/fetch.out" }

[[job]]
name = "convert"
command = "convert w.bin && echo ok"
shell = true
after = ["fetch"]
allow_failure = true
"#;
        let c = parse(text, "weaver.toml").unwrap();
        assert_eq!(c.jobs.len(), 2);
        let f = &c.jobs[0];
        assert_eq!(f.argv, ["curl", "-o", "w.bin", "http://x"]);
        assert_eq!(f.timeout, Some(Duration::from_secs(300)));
        assert_eq!(f.gpus.as_deref(), Some(&[0, 1][..]));
        assert_eq!(f.env["CUDA_VISIBLE_DEVICES"], "0,1");
        assert_eq!(f.env["A"], "1");
        assert_eq!(f.stop_signal, nix::sys::signal::Signal::SIGINT);
        assert_eq!(f.stop_timeout, Duration::from_secs(3));
        assert_eq!(f.output.ring_bytes, crate::run::JobSpec::DEFAULT_RING_BYTES);
        assert!(f.output.file.is_some());
        let v = &c.jobs[1];
        assert_eq!(v.argv, ["/bin/sh", "-c", "convert w.bin && echo ok"]);
        assert_eq!(v.after, ["fetch"]);
        assert!(v.allow_failure && !f.allow_failure);
        assert!(c.processes.is_empty());
    }

    #[test]
    fn cycles_unknown_names_and_shared_names_are_located() {
        let text = "[[process]]\nname = \"db\"\ncommand = [\"db\"]\n\
                    [[job]]\nname = \"a\"\ncommand = [\"a\"]\nafter = [\"b\"]\n\
                    [[job]]\nname = \"b\"\ncommand = [\"b\"]\nafter = [\"a\", \"fech\", \"db\"]\n\
                    [[job]]\nname = \"db\"\ncommand = [\"x\"]\ntimeout = 0\n\
                    [[job]]\nname = \"a\"\ncommand = [\"y\"]\ncolour = 1\n";
        assert_eq!(
            errors(text),
            [
                "weaver.toml:7:10: job cycle: a -> b -> a",
                "weaver.toml:11:15: [[job]] \"b\" runs after unknown job \"fech\"",
                "weaver.toml:13:8: job name \"db\" is taken by the [[process]] on line 1: processes and jobs share one namespace (rename one)",
                "weaver.toml:15:11: timeout in [[job]] \"db\": must be more than 0 (leave timeout out for none)",
                "weaver.toml:17:8: duplicate job name \"a\" (first declared on line 4)",
                "weaver.toml:19:1: unknown key \"colour\" in [[job]] \"a\"",
            ]
        );
        let text = "[[process]]\nname = \"db\"\ncommand = [\"db\"]\n\
                    [[job]]\nname = \"migrate\"\ncommand = [\"m\"]\nafter = [\"db\"]\n";
        assert_eq!(
            errors(text),
            ["weaver.toml:7:10: [[job]] \"migrate\" runs after \"db\", which is a [[process]], not a job: `after` of a job names jobs only"]
        );
    }
}
