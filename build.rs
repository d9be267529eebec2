//! Builds the C compute library (`compute-daemon/src`) with `cc` and, with the
//! `regen-bindings` feature, regenerates `src/ffi/bindings.rs` from
//! `include/weaver_compute.h` with bindgen.
//!
//! The C code gets the crate's version as `-DWC_DAEMON_VERSION="..."`, so
//! `--version` and the `info` op report what `Cargo.toml` says (the Makefile
//! reads the same line).
//!
//! Under `cargo fuzz` the C library is built with clang and the same
//! sanitizer and coverage instrumentation as the Rust code.
//!
//! The bindings are committed so that a machine without libclang builds. With
//! the feature on, a committed file that differs from the fresh output fails
//! the build (CI runs this), unless `WEAVER_BLESS_BINDINGS=1` asks to rewrite it.

use std::path::Path;

/// Library sources; `main.c` is compiled too (it exports `wc_daemon_main`),
/// `entry.c` (the plain C `main`) is only for `make -C compute-daemon`.
const C_SOURCES: &[&str] = &[
    "frame.c", "text.c", "socket.c", "fdpass.c", "ops.c", "render.c", "job.c", "pool.c",
    "reader.c", "loop.c", "main.c",
];

fn main() {
    let src = Path::new("compute-daemon/src");
    let mut build = cc::Build::new();
    build
        .std("c11")
        .include("include")
        .warnings(true)
        .extra_warnings(true)
        .warnings_into_errors(true)
        .flag("-ffp-contract=off")
        .flag("-pthread");
    let version = std::env::var("CARGO_PKG_VERSION").expect("cargo sets CARGO_PKG_VERSION");
    build.define("WC_DAEMON_VERSION", format!("\"{version}\"").as_str());
    println!("cargo:rerun-if-changed=Cargo.toml");
    for f in C_SOURCES {
        let p = src.join(f);
        build.file(&p);
        println!("cargo:rerun-if-changed={}", p.display());
    }
    for entry in std::fs::read_dir(src).expect("compute-daemon/src exists") {
        let p = entry.expect("readable dir entry").path();
        if p.extension().is_some_and(|e| e == "h") {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
    println!("cargo:rerun-if-changed=include/weaver_compute.h");
    fuzzing_instrumentation(&mut build);
    build.compile("weaver_compute");
    println!("cargo:rustc-link-lib=pthread");

    #[cfg(feature = "regen-bindings")]
    regen_bindings();
}

/// Under `cargo fuzz` (`--cfg fuzzing` and `-Zsanitizer=...` in RUSTFLAGS),
/// the C library gets what the Rust code gets: libFuzzer's coverage
/// instrumentation and the same sanitizer, so that fuzzing through the FFI
/// is guided by the C code's branches and catches its memory errors. That
/// takes clang (`CC` if set, else `clang`): gcc's coverage hooks are not
/// the ones libFuzzer reads.
fn fuzzing_instrumentation(build: &mut cc::Build) {
    if std::env::var_os("CARGO_CFG_FUZZING").is_none() {
        return;
    }
    if std::env::var_os("CC").is_none() {
        build.compiler("clang");
    }
    if !build.get_compiler().is_like_clang() {
        println!(
            "cargo:warning=the C library is built without fuzzing instrumentation: \
             it needs clang (set CC=clang)"
        );
        return;
    }
    build.flag("-fsanitize=fuzzer-no-link").flag("-fno-omit-frame-pointer");
    let sanitizers = std::env::var("CARGO_CFG_SANITIZE").unwrap_or_default();
    for s in sanitizers.split(',') {
        if matches!(s, "address" | "memory" | "thread") {
            build.flag(format!("-fsanitize={s}"));
        }
    }
}

#[cfg(feature = "regen-bindings")]
fn regen_bindings() {
    println!("cargo:rerun-if-env-changed=WEAVER_BLESS_BINDINGS");
    // A hand edit of the committed file must be caught too.
    println!("cargo:rerun-if-changed=src/ffi/bindings.rs");
    // Pin the Rust target to the crate's rust-version: bindgen's default is the
    // toolchain running the build, which would make the committed file depend
    // on whoever last blessed it (and use syntax newer than rust-version).
    let target = bindgen::RustTarget::stable(75, 0).expect("bindgen knows Rust 1.75");
    let fresh = bindgen::Builder::default()
        .rust_target(target)
        .header("include/weaver_compute.h")
        .allowlist_function("wc_.*|socket_connect")
        .allowlist_type("wc_.*")
        .allowlist_var("WC_.*")
        .rustified_enum("wc_serve_result|wc_decode_result|wc_fd_result")
        .constified_enum_module("wc_frame_kind|wc_op|wc_status")
        .derive_default(true)
        .derive_eq(true)
        .layout_tests(true)
        .formatter(bindgen::Formatter::Prettyplease)
        .generate()
        .expect("bindgen could not parse include/weaver_compute.h (is libclang-dev installed?)")
        .to_string();
    let committed_path = Path::new("src/ffi/bindings.rs");
    let committed = std::fs::read_to_string(committed_path).unwrap_or_default();
    if committed != fresh {
        if std::env::var_os("WEAVER_BLESS_BINDINGS").is_some() {
            std::fs::write(committed_path, &fresh).expect("write src/ffi/bindings.rs");
        } else {
            panic!(
                "src/ffi/bindings.rs is stale: include/weaver_compute.h changed. \
                 Regenerate it with `WEAVER_BLESS_BINDINGS=1 cargo build --features regen-bindings` \
                 and commit the result."
            );
        }
    }
}
