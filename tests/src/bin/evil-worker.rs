//! A compromised worker for the P rows of the fault matrix: it speaks the
//! wpool protocol, echoes items like an honest worker, and misbehaves in the
//! way `EVIL_MODE` says (set through the pool's launcher, `env EVIL_MODE=…`,
//! since workers get an empty environment).
//!
//! With `EVIL_ONCE=PATH` it misbehaves only while PATH does not exist (and
//! creates it), so that a retry on the next worker succeeds.
//!
//! | mode | behaviour |
//! |---|---|
//! | `garbage` | answers a chunk with random bytes |
//! | `huge-frame` | announces a 4 GiB frame, then stalls |
//! | `wrong-chunk` | answers for a chunk id it was never given |
//! | `give-back-unasked` | answers every chunk with `Revoked`, unasked |
//! | `duplicate` | answers every chunk twice |
//! | `exit-after-handshake` | sends `Ready`, then exits |
//! | `no-handshake` | never answers the `Hello` |
//! | `stderr-flood` | writes 64 MiB to stderr before each answer |
//! | `large-lie` | answers each item as a `LargeResult` whose bytes are 1000 fewer than announced |
//! | `fuzz` | answers each chunk in a way drawn from `EVIL_SEED`: honestly, with junk, a frame of junk, a mutated frame, a truncated frame and exit, wrong offsets or counts, a duplicate, another chunk's id, a `Revoked` unasked, a `LargeResult` honest or lying about its length or cut short, or a crash |

use std::io::{Read, Write};

use wpool::protocol::{self, HostMsg, Outcome, WorkerMsg, HANDSHAKE_FRAME_CAP, PROTOCOL_VERSION};

fn main() {
    let mode = std::env::var("EVIL_MODE").unwrap_or_default();
    let evil = match std::env::var_os("EVIL_ONCE") {
        Some(marker) => std::fs::OpenOptions::new().write(true).create_new(true).open(marker).is_ok(),
        None => true,
    };
    let mode = if evil { mode.as_str() } else { "honest" };
    // Started through a launcher, like a remote worker: it dials back.
    let conn = match wpool::remote::dial_back() {
        Ok(conn) => conn,
        Err(e) => {
            let cause = std::error::Error::source(&e).map(|c| format!(": {c}")).unwrap_or_default();
            eprintln!("evil-worker: {e}{cause}");
            std::process::exit(2);
        }
    };
    let mut input = conn.try_clone().unwrap();
    let mut output = conn;
    let mut buf = Vec::new();
    if protocol::read_frame(&mut input, HANDSHAKE_FRAME_CAP, &mut buf).is_err() {
        return;
    }
    let Ok(HostMsg::Hello(hello)) = protocol::decode::<HostMsg>(&buf) else { return };
    if mode == "no-handshake" {
        // Hold the pipe open and say nothing.
        let _ = input.read_to_end(&mut Vec::new());
        return;
    }
    protocol::write_frame(
        &mut output,
        &WorkerMsg::Ready {
            version: PROTOCOL_VERSION,
            pid: std::process::id(),
            node: "evil".into(),
            sandbox: wpool::sandbox::SandboxStatus::unconfined("evil"),
        },
    )
    .unwrap();
    if mode == "exit-after-handshake" {
        std::process::exit(0);
    }
    let cap = protocol::frame_cap(hello.settings.limits.max_item_size);
    let mut seed: u64 = std::env::var("EVIL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x9e3779b97f4a7c15) | 1;
    loop {
        if protocol::read_frame(&mut input, cap, &mut buf).is_err() {
            return;
        }
        let (chunk, items) = match protocol::decode::<HostMsg>(&buf) {
            Ok(HostMsg::Run { chunk, items }) => (chunk, items),
            // Too late: it runs (answered) every chunk as it comes.
            Ok(HostMsg::Revoke { .. }) => continue,
            _ => return,
        };
        let outcomes: Vec<Outcome> = items.iter().map(|i| Outcome::Ok(i.to_vec())).collect();
        let answer = |chunk| WorkerMsg::Results {
            chunk,
            offset: 0,
            outcomes: outcomes.clone(),
            busy_ns: 1,
            batched: 0,
            fallbacks: 0,
        };
        match mode {
            "fuzz" => fuzz(&mut output, &mut seed, chunk, &answer(chunk)),
            "garbage" => {
                let junk: Vec<u8> = (0..64).map(|_| next(&mut seed) as u8).collect();
                let _ = output.write_all(&junk);
                let _ = output.flush();
            }
            "huge-frame" => {
                let _ = output.write_all(&u32::MAX.to_le_bytes());
                let _ = output.flush();
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
            "wrong-chunk" => {
                let _ = protocol::write_frame(&mut output, &answer(chunk + 1000));
            }
            "give-back-unasked" => {
                let _ = protocol::write_frame(&mut output, &WorkerMsg::Revoked { chunk });
            }
            "duplicate" => {
                let _ = protocol::write_frame(&mut output, &answer(chunk));
                let _ = protocol::write_frame(&mut output, &answer(chunk));
            }
            "large-lie" => {
                for (offset, item) in items.iter().enumerate() {
                    let _ = output.write_all(&large_result(chunk, offset as u32, item.len() as u32 + 1000, item));
                }
                let _ = output.flush();
            }
            "stderr-flood" => {
                let line = vec![b'!'; 1 << 20];
                let mut err = std::io::stderr().lock();
                for _ in 0..64 {
                    let _ = err.write_all(&line);
                }
                let _ = protocol::write_frame(&mut output, &answer(chunk));
            }
            _ => {
                let _ = protocol::write_frame(&mut output, &answer(chunk));
            }
        }
    }
}

/// A `LargeResult` frame announcing `len` bytes, then a frame of `data`.
fn large_result(chunk: u64, offset: u32, len: u32, data: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    let msg = WorkerMsg::LargeResult { chunk, offset, len, busy_ns: 1, batched: 0, fallbacks: 0 };
    protocol::encode(&msg, &mut f);
    f.extend_from_slice(&(data.len() as u32).to_le_bytes());
    f.extend_from_slice(data);
    f
}

fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// One answer to `chunk`, drawn from `seed`: what a compromised or broken
/// worker could send. The host must survive every one with typed errors.
fn fuzz(output: &mut impl Write, seed: &mut u64, chunk: u64, honest: &WorkerMsg) {
    let mut frame = Vec::new();
    protocol::encode(honest, &mut frame);
    let junk = |seed: &mut u64, n: usize| (0..n).map(|_| next(seed) as u8).collect::<Vec<u8>>();
    let out = match next(seed) % 14 {
        0..=2 => frame,
        3 => {
            let n = (next(seed) % 200) as usize;
            junk(seed, n)
        }
        4 => {
            // A well-formed length, a payload of junk.
            let n = (next(seed) % 1000) as usize;
            let mut f = (n as u32).to_le_bytes().to_vec();
            f.extend(junk(seed, n));
            f
        }
        5 => {
            // The honest frame with a few bytes flipped after the length.
            for _ in 0..1 + next(seed) % 4 {
                let at = 4 + (next(seed) as usize) % (frame.len() - 4).max(1);
                if let Some(b) = frame.get_mut(at) {
                    *b ^= 1 << (next(seed) % 8);
                }
            }
            frame
        }
        6 => {
            // Part of a frame, then gone.
            let cut = (next(seed) as usize) % frame.len();
            let _ = output.write_all(&frame[..cut]);
            let _ = output.flush();
            std::process::exit(0);
        }
        7 => {
            let WorkerMsg::Results { outcomes, busy_ns, batched, fallbacks, .. } = honest else { unreachable!() };
            let mut outcomes = outcomes.clone();
            let offset = match next(seed) % 3 {
                0 => 1 + (next(seed) % 4) as u32,
                1 => {
                    outcomes.extend(outcomes.clone());
                    0
                }
                _ => u32::MAX - (next(seed) % 2) as u32,
            };
            let msg = WorkerMsg::Results {
                chunk,
                offset,
                outcomes,
                busy_ns: *busy_ns,
                batched: *batched,
                fallbacks: *fallbacks,
            };
            let mut f = Vec::new();
            protocol::encode(&msg, &mut f);
            f
        }
        8 => [frame.clone(), frame].concat(),
        9 => {
            let WorkerMsg::Results { outcomes, .. } = honest else { unreachable!() };
            let other = WorkerMsg::Results {
                chunk: chunk.wrapping_add(1 + next(seed) % 3),
                offset: 0,
                outcomes: outcomes.clone(),
                busy_ns: next(seed),
                batched: next(seed) as u32,
                fallbacks: next(seed) as u32,
            };
            let mut f = Vec::new();
            protocol::encode(&other, &mut f);
            f
        }
        10 => {
            let mut f = Vec::new();
            let msg = match next(seed) % 4 {
                0 => WorkerMsg::Failed { message: "fuzz".into() },
                1 => WorkerMsg::InitFailed { message: "fuzz".into() },
                2 => WorkerMsg::Revoked { chunk: chunk.wrapping_add(next(seed) % 2) },
                _ => WorkerMsg::Ready {
                    version: PROTOCOL_VERSION,
                    pid: 1,
                    node: "again".into(),
                    sandbox: wpool::sandbox::SandboxStatus::unconfined("fuzz"),
                },
            };
            protocol::encode(&msg, &mut f);
            f
        }
        11 | 12 => {
            // Each outcome as a `LargeResult`: honest, lying about its
            // length (more or fewer bytes than announced), or cut short.
            let WorkerMsg::Results { outcomes, .. } = honest else { unreachable!() };
            let mut f = Vec::new();
            for (offset, outcome) in outcomes.iter().enumerate() {
                let Outcome::Ok(data) = outcome else { unreachable!() };
                let len = data.len() as u32;
                match next(seed) % 4 {
                    0 | 1 => f.extend(large_result(chunk, offset as u32, len, data)),
                    2 => f.extend(large_result(chunk, offset as u32, len ^ (1 + next(seed) as u32 % 8), data)),
                    _ => {
                        let frame = large_result(chunk, offset as u32, len, data);
                        let cut = (next(seed) as usize) % frame.len();
                        f.extend_from_slice(&frame[..cut]);
                        let _ = output.write_all(&f);
                        let _ = output.flush();
                        std::process::exit(0);
                    }
                }
            }
            f
        }
        _ => {
            // SAFETY: raising a signal at ourselves: the crash is the point.
            unsafe { libc::raise(if next(seed).is_multiple_of(2) { libc::SIGSEGV } else { libc::SIGKILL }) };
            std::process::exit(1);
        }
    };
    let _ = output.write_all(&out);
    let _ = output.flush();
}
