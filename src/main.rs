//! The `irsa-secrets` binary: parse, set up logging, build the runtime, run, exit. All logic
//! lives in the library.

use std::process::ExitCode;

use irsa_secrets::cli::Cli;

/// jemalloc, for memory that comes back: glibc's malloc keeps what thousands of closed
/// connections freed (RSS only ever grows after bursts) unless trimmed, and the shipped image is
/// static musl, whose malloc is another story again; one bundled allocator behaves the same in
/// every build. Measured with `tests/it/memory.rs`; the figures are in docs/benchmarks.md.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main`: a background thread gives freed pages back to the
/// system after about a second unused (the default, 10 s and only while the process allocates,
/// left an idle helper holding a burst's memory). C reads it as `const char *`: a thin pointer.
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: &[u8; 60] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

fn main() -> ExitCode {
    let (cli, matches) = Cli::from_env();
    let settings = cli.runtime();
    irsa_secrets::cli::logging::init(settings.log_format);
    let runtime = match usize::from(settings.worker_threads) {
        // One thread: no cross-thread wake-ups on the data path (measured: about 15% less CPU
        // per forwarded byte than two workers).
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli.run(&matches)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
