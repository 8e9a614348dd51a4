//! Using wpool from another program: map a kernel over the lines of stdin.
//!
//! ```text
//! cargo run -p wpool --example map_lines -- target/kernels/wasip2/upper.wasm < examples/hello.txt
//! ```
//!
//! Note what is *not* here: no "main guard". Worker processes re-execute
//! this very binary, and wpool turns them into workers before `main` runs.

use std::io::{BufRead, Write};

use wpool::{Kernel, Pool};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: map_lines KERNEL.wasm < lines")?;
    let kernel = Kernel::from_file(&path)?;
    let mut pool = Pool::builder(kernel).workers(2).build()?;
    pool.wait_ready()?;
    eprintln!("workers: {:?}", pool.worker_pids());

    let lines = std::io::stdin().lock().lines().map_while(Result::ok);
    let mut out = std::io::stdout().lock();
    let mut failures = 0;
    for result in pool.imap(lines) {
        match result? {
            Ok(bytes) => {
                out.write_all(&bytes)?;
                out.write_all(b"\n")?;
            }
            Err(task_error) => {
                failures += 1;
                eprintln!("{task_error}");
            }
        }
    }
    eprintln!("{failures} failed");
    Ok(())
}
