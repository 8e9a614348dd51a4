//! The seed workflows beyond a single map: an initializer with broadcast
//! configuration, and read-only data shared by every instance.

use wpool::{Error, Pool};
use wpool_tests::*;

const TABLE: &[u8] = b"cat\tchat\ndog\tchien\n";
const WORDS: &[u8] = b"the cat and the dog\nno match here\n\ndog  cat\n";
const EXPECTED: &str = "the chat and the chien\nno match here\n\nchien  chat\n";

fn dict_map(extra: &[&str]) -> std::process::Command {
    let mut c = wpool();
    c.args(["map", "-j", "2"]).args(extra).arg(kernel_path("dict"));
    c
}

#[test]
fn init_configures_every_instance_before_any_item() {
    let table = temp_file(TABLE);
    let table = table.path().to_str().unwrap();
    // With --isolate every item gets a fresh instance: `init` must run on
    // each of them, or `map` fails with "map called before init".
    for extra in [&["--init", table][..], &["--init", table, "--isolate"][..]] {
        let o = run(dict_map(extra), WORDS);
        assert_eq!(o.status.code(), Some(0), "{extra:?}: {}", stderr(&o));
        assert_eq!(stdout(&o), EXPECTED, "{extra:?}");
    }
}

#[test]
fn a_failing_init_stops_the_run_naming_the_kernel_and_the_message() {
    let bad = temp_file(b"cat\tchat\nno tab here\n");
    let o = run(dict_map(&["--init", bad.path().to_str().unwrap()]), WORDS);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("dict.wasm: `init` failed: dict: line 2 has no tab"), "{err}");
    assert!(o.stdout.is_empty(), "nothing ran");
    // No configuration at all: the kernel's own message says what to pass.
    let o = run(dict_map(&[]), WORDS);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("dict: no table: pass one with --init FILE or --data FILE"), "{}", stderr(&o));
}

#[test]
fn init_for_a_kernel_without_init_is_an_error() {
    let table = temp_file(TABLE);
    let mut c = wpool();
    c.args(["map", "--init"]).arg(table.path()).arg(kernel_path("echo"));
    let o = run(c, b"x\n");
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("echo.wasm: has no `init` export"), "{}", stderr(&o));
    let o = run(dict_map(&["--init", "/no/such/config"]), WORDS);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--init /no/such/config"), "{}", stderr(&o));
}

#[test]
fn data_file_is_shared_read_only_as_data() {
    let table = temp_file(TABLE);
    let o = run(dict_map(&["--data", table.path().to_str().unwrap()]), WORDS);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), EXPECTED);
    let o = run(dict_map(&["--data", "/no/such/data"]), WORDS);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--data /no/such/data"), "{}", stderr(&o));
}

#[test]
fn library_init_errors_are_typed() {
    let mut p = Pool::builder(kernel("dict")).workers(2).init(TABLE).build().unwrap();
    let out = p.map(["the cat", "a dog"]).unwrap();
    assert_eq!(out[0].as_deref().unwrap(), b"the chat");
    assert_eq!(out[1].as_deref().unwrap(), b"a chien");
    match Pool::builder(kernel("echo")).init(TABLE).build().unwrap_err() {
        Error::NoInit { kernel } => assert!(kernel.ends_with("echo.wasm"), "{kernel}"),
        other => panic!("expected NoInit, got {other:?}"),
    }
    match Pool::builder(kernel("dict")).init(b"no tab".to_vec()).build().unwrap_err() {
        Error::InitFailed { kernel, message } => {
            assert!(kernel.ends_with("dict.wasm"), "{kernel}");
            assert!(message.contains("line 1 has no tab"), "{message}");
        }
        other => panic!("expected InitFailed, got {other:?}"),
    }
    assert!(kernel("dict").has_init() && !kernel("echo").has_init());
}

#[test]
fn readme_init_and_data_examples_give_the_documented_output() {
    let expected = "my favorite color\nthe neighbor went to the theater\nnothing to change\n";
    for flag in ["--init", "--data"] {
        let mut c = wpool();
        c.current_dir(root()).args(["map", "-j", "2", flag, "examples/uk-us.tsv"]);
        c.arg(kernel_path("dict")).arg("examples/uk.txt");
        let o = run(c, b"");
        assert_eq!(o.status.code(), Some(0), "{flag}: {}", stderr(&o));
        assert_eq!(stdout(&o), expected, "{flag}");
    }
}
