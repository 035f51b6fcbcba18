//! Build script: bindgen over the httpd/APR headers the Apache layer uses,
//! cc for the C shim in `apache/`, and a linker version script so the
//! cdylib exports only the module record httpd looks up (and the mod_wsgi
//! daemon entry points).
//!
//! Header locations come from `apxs -q INCLUDEDIR` and
//! `apr-1-config --includes` (override the tools with `APXS` and
//! `APR_CONFIG`); nothing is hard-coded.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const SHIM: &str = "apache/mod_amqp_heartbeat.c";
/// The C/Rust contract: directive indexes and entry-point types, read by
/// the shim and by bindgen.
const CONTRACT: &str = "apache/amqphb.h";

/// The dynamic symbols of the module: what `LoadModule` resolves, and the
/// entry points a mod_wsgi daemon process calls through ctypes
/// (src/apache/daemon.rs, apache/amqp_heartbeat_daemon.py).
const EXPORTED_SYMBOLS: &[&str] = &[
    "amqp_heartbeat_module",
    "amqp_heartbeat_daemon_start",
    "amqp_heartbeat_daemon_stop",
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={SHIM}");
    println!("cargo:rerun-if-changed={CONTRACT}");
    println!("cargo:rerun-if-env-changed=APXS");
    println!("cargo:rerun-if-env-changed=APR_CONFIG");

    let out_dir = PathBuf::from(
        env::var_os("OUT_DIR").unwrap_or_else(|| fail("OUT_DIR is not set (run through cargo)")),
    );
    let headers = Headers::find();

    generate_bindings(&headers, &out_dir);
    compile_shim(&headers);
    restrict_exports(&out_dir);
}

/// Include directories and preprocessor defines httpd modules build with.
struct Headers {
    include_dirs: Vec<PathBuf>,
    /// `-DNAME[=VALUE]` flags from apxs/apr (e.g. `-D_GNU_SOURCE`).
    defines: Vec<String>,
}

impl Headers {
    fn find() -> Headers {
        const APR_PACKAGE: &str = "libapr1-dev (pulled in by apache2-dev)";
        let apxs = env::var("APXS").unwrap_or_else(|_| "apxs".to_string());
        let apr_config = env::var("APR_CONFIG").unwrap_or_else(|_| "apr-1-config".to_string());

        let mut include_dirs = vec![PathBuf::from(tool_output(
            &apxs,
            &["-q", "INCLUDEDIR"],
            "apache2-dev",
        ))];
        let mut defines = Vec::new();
        let flags = [
            tool_output(&apr_config, &["--includes"], APR_PACKAGE),
            tool_output(&apr_config, &["--cppflags"], APR_PACKAGE),
            tool_output(&apxs, &["-q", "EXTRA_CPPFLAGS"], "apache2-dev"),
        ];
        for flag in flags.iter().flat_map(|f| f.split_whitespace()) {
            if let Some(dir) = flag.strip_prefix("-I") {
                let dir = PathBuf::from(dir);
                if !include_dirs.contains(&dir) {
                    include_dirs.push(dir);
                }
            } else if flag.starts_with("-D") && !defines.iter().any(|d| d == flag) {
                defines.push(flag.to_string());
            }
        }
        let httpd_h = include_dirs[0].join("httpd.h");
        if !httpd_h.is_file() {
            fail(&format!(
                "{} not found (apxs -q INCLUDEDIR); install the Debian package apache2-dev",
                httpd_h.display()
            ));
        }
        Headers {
            include_dirs,
            defines,
        }
    }
}

/// Types the Rust side only sees behind pointers: bindgen leaves them out
/// and src/apache/bindings.rs declares them as opaque structs. (bindgen's
/// `opaque_type` drops `typedef struct X X` types altogether, hence this.)
const POINTER_ONLY_TYPES: &[&str] = &[
    "conn_rec",
    "process_rec",
    "server_addr_rec",
    "ap_conf_vector_t",
    "ap_filter_t",
    "ap_method_list_t",
    "apr_array_header_t",
    "apr_bucket_brigade",
    "apr_file_t",
    "apr_thread_mutex_t",
    "htaccess_result",
];

fn generate_bindings(headers: &Headers, out_dir: &Path) {
    let mut builder = bindgen::Builder::default()
        .header_contents(
            "amqphb_bindings.h",
            "#include <httpd.h>\n#include <http_config.h>\n#include <http_log.h>\n#include <http_main.h>\n\
             #include <apr_pools.h>\n#include <apr_strings.h>\n#include <apr_tables.h>\n\
             #include <amqphb.h>\n",
        )
        .clang_arg("-Iapache")
        .clang_args(headers.include_dirs.iter().map(|d| format!("-I{}", d.display())))
        .clang_args(headers.defines.iter().cloned())
        // Only what src/apache uses.
        .allowlist_type("server_rec|request_rec|cmd_parms|ap_directive_t|apr_pool_t|apr_table_t|apr_status_t")
        .allowlist_function("apr_table_set|apr_table_get|apr_pstrdup|apr_pool_cleanup_register|apr_pool_cleanup_null")
        // The contract (apache/amqphb.h): entry-point types, the shim's own
        // functions, the directive indexes.
        .allowlist_type("amqphb_.*_fn|amqp_heartbeat_daemon_.*_fn|amqphb_directive_index")
        .allowlist_function("amqphb_log|amqphb_module_config|amqphb_respond|amqphb_table_kept|amqphb_table_keep")
        .constified_enum_module("amqphb_directive_index")
        .allowlist_var("APLOG_(EMERG|ALERT|CRIT|ERR|WARNING|NOTICE|INFO|DEBUG)|OK|DECLINED|HTTP_INTERNAL_SERVER_ERROR|ap_conftree|ap_server_conf")
        // Kept by value in server_rec; its fields are not needed.
        .opaque_type("ap_logconf")
        .layout_tests(false)
        .derive_default(false)
        .generate_comments(false)
        .rust_edition(bindgen::RustEdition::Edition2024)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
    for name in POINTER_ONLY_TYPES {
        builder = builder.blocklist_type(name);
    }

    // A missing libclang is a panic inside bindgen; say which package helps.
    let generated = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || builder.generate())).unwrap_or_else(|_| {
        fail("bindgen could not load libclang; install the Debian package libclang-dev (or set LIBCLANG_PATH)")
    });
    let bindings = generated
        .unwrap_or_else(|e| fail(&format!("bindgen failed on the httpd/APR headers: {e}")));
    let path = out_dir.join("httpd_bindings.rs");
    bindings
        .write_to_file(&path)
        .unwrap_or_else(|e| fail(&format!("cannot write {}: {e}", path.display())));
}

fn compile_shim(headers: &Headers) {
    let mut build = cc::Build::new();
    build
        .file(SHIM)
        .include("apache")
        .includes(&headers.include_dirs)
        .warnings(true)
        .extra_warnings(true);
    for define in &headers.defines {
        let define = &define[2..];
        match define.split_once('=') {
            Some((name, value)) => build.define(name, value),
            None => build.define(define, None),
        };
    }
    build.compile("amqphb_shim");
}

/// Export only the module record httpd's `LoadModule` looks up and the
/// daemon entry points. rustc's own
/// version script hides the C object's symbols but exports every
/// `#[no_mangle]` Rust function (our `amqphb_*` entries, which only the shim
/// calls); this second script makes the record global and names those
/// entries local, which measured here overrides rustc's `global:` (a
/// wildcard would not). See docs/DESIGN.md, B1.
fn restrict_exports(out_dir: &Path) {
    let contract = std::fs::read_to_string(CONTRACT)
        .unwrap_or_else(|e| fail(&format!("cannot read {CONTRACT}: {e}")));
    let entries = rust_entry_points(&contract);
    if entries.is_empty() {
        fail(&format!(
            "no Rust entry point declarations found in {CONTRACT} (see {ENTRY_BLOCK:?})"
        ));
    }
    let path = out_dir.join("exports.map");
    let script = format!(
        "{{\n  global: {};\n  local: {};\n    *;\n}};\n",
        EXPORTED_SYMBOLS.join(";\n    "),
        entries.join(";\n    ")
    );
    std::fs::write(&path, script)
        .unwrap_or_else(|e| fail(&format!("cannot write {}: {e}", path.display())));
    println!(
        "cargo:rustc-cdylib-link-arg=-Wl,--version-script={}",
        path.display()
    );
}

/// The comment that opens the shim's block of prototypes of Rust entries.
const ENTRY_BLOCK: &str = "/* Rust entry points (src/apache/). */";

/// The function names declared in the contract's Rust entry block (up to
/// the first blank line): the `TYPE_fn NAME;` lines (the typedefs before
/// them have parentheses).
fn rust_entry_points(contract: &str) -> Vec<String> {
    let Some(start) = contract.find(ENTRY_BLOCK) else {
        return Vec::new();
    };
    let block = contract[start + ENTRY_BLOCK.len()..]
        .split("\n\n")
        .next()
        .unwrap_or("");
    block
        .lines()
        .filter(|line| !line.contains('('))
        .filter_map(|line| {
            let name = line.trim().strip_suffix(';')?.split_whitespace().last()?;
            name.starts_with("amqphb_").then(|| name.to_string())
        })
        .collect()
}

/// Trimmed stdout of a configuration tool, or a build error naming the
/// Debian package that provides it.
fn tool_output(tool: &str, args: &[&str], package: &str) -> String {
    let output = Command::new(tool).args(args).output().unwrap_or_else(|e| {
        fail(&format!(
            "cannot run '{tool}' ({e}); install the Debian package {package}"
        ))
    });
    if !output.status.success() {
        fail(&format!(
            "'{tool} {}' failed ({}): {}; install the Debian package {package}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

fn fail(message: &str) -> ! {
    panic!("\n\nmod_amqp_heartbeat build: {message}\n\n");
}
