//! `weaver compute`: one compute request, its input from the command line,
//! a file or stdin, its output to stdout or a file.

use std::io::Read;

use super::Ctx;
use crate::cli::ComputeArgs;
use crate::error::{Error, Kind, Result};
use crate::protocol::{ErrorKind as ReplyKind, Request};
use crate::wire::MAX_PAYLOAD;

pub(super) fn compute(ctx: &Ctx, a: ComputeArgs) -> Result<()> {
    let payload = input(&a)?;
    if payload.len() > MAX_PAYLOAD {
        // The error the daemon would answer (exit code 1), found before
        // anything is sent. A file or stdin is read one byte past the limit.
        let size = if payload.len() == MAX_PAYLOAD + 1 {
            format!("more than {MAX_PAYLOAD}")
        } else {
            payload.len().to_string()
        };
        return Err(Error::new(
            Kind::Request(ReplyKind::TooLarge),
            format!(
                "input of {size} bytes is over the {MAX_PAYLOAD}-byte limit of one request; split it"
            ),
        ));
    }
    let (mut c, _) = ctx.connect()?;
    let r = c
        .call(Request::Compute { op: a.op.clone(), timeout_ms: a.timeout }, &payload)
        .map_err(|e| Error::new(e.kind, format!("compute {} failed: {}", a.op, e.message)))?;
    match a.output {
        Some(p) if p.as_os_str() != "-" => std::fs::write(&p, &r.payload)
            .map_err(|e| Error::io(Kind::Io, "write output to", &p, &e)),
        _ => crate::output::write_bytes(&mut std::io::stdout().lock(), &r.payload),
    }
}

/// The request's input: `--data`, `--input` (a file or - for stdin), or the
/// KEY=VALUE parameters one a line.
fn input(a: &ComputeArgs) -> Result<Vec<u8>> {
    let either =
        || Error::new(Kind::Usage, "give either --data/--input or KEY=VALUE parameters, not both");
    if let Some(d) = &a.data {
        if !a.params.is_empty() {
            return Err(either());
        }
        return Ok(d.clone().into_bytes());
    }
    if let Some(p) = &a.input {
        if !a.params.is_empty() {
            return Err(either());
        }
        // One byte over the limit is enough to refuse it: an endless stdin
        // is not read into memory.
        let most = MAX_PAYLOAD as u64 + 1;
        let mut buf = Vec::new();
        let res = if p.as_os_str() == "-" {
            std::io::stdin().take(most).read_to_end(&mut buf).map(|_| ())
        } else {
            std::fs::File::open(p).and_then(|f| f.take(most).read_to_end(&mut buf)).map(|_| ())
        };
        res.map_err(|e| Error::io(Kind::Usage, "read input", p, &e))?;
        return Ok(buf);
    }
    for p in &a.params {
        if !p.contains('=') || p.starts_with('=') {
            return Err(Error::new(Kind::Usage, format!("parameter {p:?} is not KEY=VALUE")));
        }
    }
    Ok(a.params.join("\n").into_bytes())
}
