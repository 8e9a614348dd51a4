//! The library used from another program: the `map_lines` example is built
//! as its own binary and run as a user would run it.

use wpool_tests::*;

#[test]
fn library_example_program_maps_with_its_own_worker_processes() {
    let mut cmd = std::process::Command::new(built_binary("examples/map_lines"));
    cmd.arg(kernel_path("hostile"));
    let o = run(cmd, b"one\nerr:nope\nthree\n");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "one\nthree\n");
    let err = stderr(&o);
    assert!(err.contains("item 1: kernel: nope"), "{err}");
    assert!(err.contains("1 failed"), "{err}");
    // Two distinct worker pids were reported: real processes of its own.
    let pids_line = err.lines().find(|l| l.starts_with("workers: ")).unwrap();
    let pids: Vec<u32> = pids_line
        .trim_start_matches("workers: [")
        .trim_end_matches(']')
        .split(", ")
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2);
    assert_ne!(pids[0], pids[1]);
}
