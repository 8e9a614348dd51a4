//! The seed workflows beyond a single map: an initializer with broadcast
//! configuration, and read-only data shared by every instance.

use wpool::{Chunksize, Error, Pool};
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
    // The library error names no flag; the CLI adds it.
    assert!(stderr(&o).contains("so it takes no configuration (--init)"), "{}", stderr(&o));
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
        e @ Error::NoInit { .. } => {
            assert!(matches!(&e, Error::NoInit { kernel } if kernel.ends_with("echo.wasm")), "{e:?}");
            assert!(!e.to_string().contains("--init"), "the library names no flag: {e}");
        }
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

fn stage(name: &str) -> String {
    kernel_path(name).display().to_string()
}

#[test]
fn readme_pipeline_example_gives_the_documented_output() {
    let mut c = wpool();
    c.current_dir(root()).args(["pipeline", "--stage", &stage("validate"), "--stage", &stage("primes")]);
    c.args(["--stage", &stage("format"), "--jobs-per-stage", "1,2,1", "examples/numbers.txt"]);
    let o = run(c, b"");
    assert_eq!(o.status.code(), Some(1), "two items fail: {}", stderr(&o));
    assert_eq!(stdout(&o), "count=168\ncount=2262\ncount=25997\ncount=348513\n");
    let err = stderr(&o);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(lines[0].contains("item 2 (examples/numbers.txt:3): kernel: stage 1 ("), "{err}");
    assert!(lines[0].contains("validate: not a number: \"seven\""), "{err}");
    assert!(lines[1].contains("item 4 (examples/numbers.txt:5): kernel: stage 1 ("), "{err}");
    assert!(lines[1].contains("99999999 is larger than 10000000"), "{err}");
}

#[test]
fn an_item_failing_in_a_middle_stage_is_reported_once_and_goes_no_further() {
    let mut c = wpool();
    c.args(["pipeline", "--json", "-j", "2", "--stage", &stage("upper"), "--stage", &stage("validate")]);
    c.args(["--stage", &stage("format")]);
    let o = run(c, b"12\nabc\n7\n");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = stdout(&o).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3, "one line per item");
    assert_eq!(lines[0]["ok"]["text"], "count=12");
    assert_eq!(lines[2]["ok"]["text"], "count=7");
    assert_eq!(lines[1]["index"], 1);
    assert_eq!(lines[1]["error"]["kind"], "kernel");
    let message = lines[1]["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("stage 2 (") && message.contains("validate: not a number: \"ABC\""), "{message}");
}

#[test]
fn pipeline_stages_stream_items_without_waiting_for_the_input_to_end() {
    use std::io::{BufRead, Write};
    let mut c = wpool();
    c.args(["pipeline", "--stage", &stage("upper"), "--stage", &stage("echo")]);
    c.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    // Input stays open: the first result must come out of the last stage
    // all the same, and the second after it.
    for word in ["first", "second"] {
        writeln!(stdin, "{word}").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line, format!("{}\n", word.to_uppercase()));
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

#[test]
fn library_pipeline_runs_in_order_and_stops_when_asked() {
    assert!(matches!(wpool::pipeline::Pipeline::new(vec![]), Err(Error::EmptyPipeline)));
    let upper = Pool::builder(kernel("upper")).workers(1).build().unwrap();
    let validate = Pool::builder(kernel("validate")).workers(2).build().unwrap();
    let mut p = wpool::pipeline::Pipeline::new(vec![upper, validate]).unwrap();
    let items: Vec<Vec<u8>> =
        (0..500).map(|i| if i == 7 { b"x".to_vec() } else { i.to_string().into_bytes() }).collect();
    let mut seen = Vec::new();
    p.run(items.clone(), |index, result| {
        match result {
            Ok(bytes) => assert_eq!(bytes, items[index.get() as usize]),
            Err(f) => {
                assert_eq!((index.get(), f.stage, f.error.index), (7, 1, index));
                assert!(f.error.message.contains("not a number: \"X\""), "{}", f.error.message);
            }
        }
        seen.push(index.get());
        true
    })
    .unwrap();
    assert_eq!(seen, (0..500).collect::<Vec<u64>>());
    // Stopping early abandons the rest; the pipeline stays usable.
    let mut n = 0;
    p.run(items.clone(), |_, _| {
        n += 1;
        n < 10
    })
    .unwrap();
    assert_eq!(n, 10);
    let mut again = 0;
    p.run(items[..3].to_vec(), |_, _| {
        again += 1;
        true
    })
    .unwrap();
    assert_eq!(again, 3);
}

fn mapreduce(map: &str, reduce: &str, args: &[&str]) -> std::process::Command {
    let mut c = wpool();
    c.current_dir(root()).args(["mapreduce", "-j", "2", "--map", &stage(map), "--reduce", &stage(reduce)]).args(args);
    c
}

#[test]
fn word_count_matches_tr_sort_uniq_byte_for_byte() {
    let files: Vec<String> = std::fs::read_dir(root().join("examples/text"))
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .collect();
    assert!(files.len() >= 3);
    let mut args = vec!["--files"];
    args.extend(files.iter().map(String::as_str));
    let o = run(mapreduce("wordcount", "sum", &args), b"");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // The same definition of a word as the kernel: runs of ASCII letters,
    // digits and apostrophes, lower-cased.
    let script = "cat \"$@\" | tr 'A-Z' 'a-z' | tr -cs \"a-z0-9'\" '\\n' | grep -v '^$' | LC_ALL=C sort \
                  | uniq -c | awk '{print $2 \"\\t\" $1}' | LC_ALL=C sort -t \"$(printf '\\t')\" -k1,1";
    let reference = std::process::Command::new("sh").arg("-c").arg(script).arg("sh").args(&files).output().unwrap();
    assert!(reference.status.success());
    assert!(!reference.stdout.is_empty());
    assert!(
        o.stdout == reference.stdout,
        "wpool:\n{}\nreference:\n{}",
        stdout(&o),
        String::from_utf8_lossy(&reference.stdout)
    );
}

#[test]
fn readme_statistics_example_gives_the_documented_output() {
    let o = run(mapreduce("csv-kv", "stats", &["examples/temps.csv"]), b"");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "cairo\tcount=2 sum=59.5 min=28 max=31.5 mean=29.75\n\
         lima\tcount=3 sum=58.5 min=18.5 max=21 mean=19.5\n\
         oslo\tcount=3 sum=-2.5 min=-3.5 max=2 mean=-0.8333333333333334\n"
    );
}

#[test]
fn many_values_of_one_key_are_combined_in_batches() {
    // 10 000 values for one key, 64 per call, results fed back in.
    let input: String = (0..10_000).map(|i| format!("hot,{}\ncold,{}\n", i % 7, 1)).collect();
    let o = run(mapreduce("csv-kv", "sum", &[]), input.as_bytes());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let hot: u64 = (0..10_000u64).map(|i| i % 7).sum();
    assert_eq!(stdout(&o), format!("cold\t10000\nhot\t{hot}\n"));
}

#[test]
fn a_key_whose_values_do_not_fit_one_reduce_call_is_reduced_in_several() {
    // 300 values per key; under a 64-byte item cap a reduce call holds a
    // few of them: the values go into as many calls as it takes, and the
    // results are reduced again, to the same totals.
    let input = "the cat\n".repeat(300);
    let o = run(mapreduce("wordcount", "sum", &["--max-item-size", "64"]), input.as_bytes());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "cat\t300\nthe\t300\n");
}

#[test]
fn a_failing_reducer_fails_its_key_and_a_failing_map_item_its_item() {
    let o = run(mapreduce("csv-kv", "sum", &["--json"]), b"a,1\nb,x\nno comma\na,2\n");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = stdout(&o).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3, "{}", stdout(&o));
    assert_eq!(lines[0]["index"], 2, "the map failure, with its index");
    assert!(lines[0]["error"]["message"].as_str().unwrap().contains("no comma"), "{}", lines[0]);
    assert_eq!((&lines[1]["key"], &lines[1]["ok"]["text"]), (&"a".into(), &"3".into()));
    assert_eq!(lines[2]["key"], "b");
    assert!(
        lines[2]["error"]["message"].as_str().unwrap().contains("value 0 of key b is not an integer"),
        "{}",
        lines[2]
    );
    let err = stderr(&o);
    assert!(err.contains("item 2 (<stdin>:3)") && err.contains("key \"b\""), "{err}");
}

#[test]
fn library_mapreduce_checks_its_kernels() {
    let map = || Pool::builder(kernel("wordcount")).workers(1).build().unwrap();
    let reduce = || Pool::builder(kernel("sum")).workers(1).build().unwrap();
    assert!(kernel("sum").is_reducer() && !kernel("wordcount").is_reducer());
    assert!(matches!(
        wpool::mapreduce::MapReduce::new(reduce(), reduce()),
        Err(Error::WrongKernelForStage { stage: "map", .. })
    ));
    assert!(matches!(
        wpool::mapreduce::MapReduce::new(map(), map()),
        Err(Error::WrongKernelForStage { stage: "reduce", .. })
    ));
    let mut mr = wpool::mapreduce::MapReduce::new(map(), reduce()).unwrap();
    let out = mr.run(["b a b", "a c"], |_, r| r.map(|()| true).unwrap_or_else(|e| panic!("{e}"))).unwrap();
    let out: Vec<(String, String)> =
        out.into_iter().map(|(k, v)| (String::from_utf8(k).unwrap(), String::from_utf8(v.unwrap()).unwrap())).collect();
    assert_eq!(out, [("a", "2"), ("b", "2"), ("c", "1")].map(|(k, v)| (k.to_string(), v.to_string())));
    let mut c = wpool();
    c.args(["map", &stage("sum")]);
    let o = run(c, b"x\n");
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("a reducer (world `reducer`)"), "{}", stderr(&o));
}

#[test]
fn stopping_a_pipeline_early_with_many_items_in_flight_returns() {
    // Enough fast items to fill every buffer between and inside the stages.
    let upper = Pool::builder(kernel("upper")).workers(2).build().unwrap();
    let echo = Pool::builder(kernel("echo")).workers(1).build().unwrap();
    let mut p = wpool::pipeline::Pipeline::new(vec![upper, echo]).unwrap();
    let items: Vec<Vec<u8>> = (0..50_000).map(|i| format!("item {i}").into_bytes()).collect();
    let mut n = 0;
    p.run(items, |_, _| {
        n += 1;
        n < 100
    })
    .unwrap();
    assert_eq!(n, 100);
}

#[test]
fn ctrl_c_stops_a_pipeline_waiting_on_stdin() {
    use std::io::{BufRead, Write};
    let mut c = wpool();
    c.args(["pipeline", "--stage", &stage("upper"), "--stage", &stage("echo")]);
    c.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    writeln!(stdin, "one").unwrap();
    stdin.flush().unwrap();
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ONE\n");
    let workers: Vec<u32> = children_of(child.id());
    assert!(!workers.is_empty());
    // Input stays open and silent: the interrupt alone must end the run.
    signal(child.id(), libc::SIGINT);
    let started = std::time::Instant::now();
    let status = child.wait().unwrap();
    drop(stdin);
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(130), "{status:?} {err}");
    assert!(eventually(std::time::Duration::from_secs(10), || workers.iter().all(|w| !alive(*w))), "workers ended");
}

#[test]
fn no_batch_gives_the_same_output_and_says_so_with_verbose() {
    // 20 000 tiny items through an SDK kernel (it exports `map-batch`): by
    // default most go through batched calls, with --no-batch none do, and
    // the output is the same.
    let input: Vec<u8> = (0..20_000).flat_map(|i| format!("line {i}\n").into_bytes()).collect();
    let mut outputs = Vec::new();
    for extra in [&[][..], &["--no-batch"][..]] {
        let mut c = wpool();
        c.args(["map", "-v", "-j", "2"]).args(extra).arg(kernel_path("upper"));
        let o = run(c, &input);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let err = stderr(&o);
        let line = err.lines().find(|l| l.contains("items in batched calls")).unwrap_or_else(|| panic!("{err}"));
        let batched: u64 =
            line.split(", ").find_map(|p| p.strip_suffix(" items in batched calls")).unwrap().parse().unwrap();
        if extra.is_empty() {
            assert!(batched > 10_000, "{line}");
        } else {
            assert_eq!(batched, 0, "{line}");
        }
        outputs.push(stdout(&o));
    }
    assert_eq!(outputs[0], outputs[1]);
    assert_eq!(outputs[0].lines().nth(19_999), Some("LINE 19999"));
}

/// The seed's speedup table: the same run at each worker count, as JSON
/// and as a chart whose points are the measured speedups.
#[test]
fn bench_measures_each_worker_count_and_draws_one_point_per_count() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("speedup.svg");
    let input = root().join("examples").join("primes.txt");
    let mut c = wpool();
    c.args(["bench", "-j", "1,2", "--repeat", "2", "--json", "--svg"]).arg(&svg).arg(kernel_path("primes")).arg(&input);
    let o = run(c, b"");
    assert!(o.status.success(), "{}", stderr(&o));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json["items"], 16);
    assert_eq!(json["failed_items"], 0);
    let rows = json["rows"].as_array().unwrap();
    assert_eq!(rows.iter().map(|r| r["workers"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(rows[0]["speedup"], 1.0, "against the first count");
    for r in rows {
        assert_eq!(r["seconds"].as_array().unwrap().len(), 2, "--repeat 2: {r}");
        let median = r["median_seconds"].as_f64().unwrap();
        assert!(median > 0.0);
        let efficiency = r["efficiency"].as_f64().unwrap();
        assert!((efficiency - r["speedup"].as_f64().unwrap() / r["workers"].as_f64().unwrap()).abs() < 1e-9);
    }

    // Well-formed SVG with one point (circle) per worker count, left to
    // right in worker order, higher for the larger speedup.
    let text = std::fs::read_to_string(&svg).unwrap();
    let doc = roxmltree::Document::parse(&text).unwrap_or_else(|e| panic!("not well-formed: {e}"));
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let circles: Vec<(f64, f64)> = doc
        .descendants()
        .filter(|n| n.has_tag_name("circle"))
        .map(|n| (n.attribute("cx").unwrap().parse().unwrap(), n.attribute("cy").unwrap().parse().unwrap()))
        .collect();
    assert_eq!(circles.len(), 2, "{text}");
    assert!(circles[0].0 < circles[1].0);
    let (s1, s2) = (rows[0]["speedup"].as_f64().unwrap(), rows[1]["speedup"].as_f64().unwrap());
    assert_eq!(circles[0].1 > circles[1].1, s2 > s1, "y grows upwards with the speedup");
    assert!(text.contains("wpool bench: primes.wasm"));
    assert!(!dir.path().join("speedup.svg.tmp").exists());

    // The table, for people.
    let mut c = wpool();
    c.args(["bench", "-j", "2,1", "--repeat", "1"]).arg(kernel_path("primes")).arg(&input);
    let o = run(c, b"");
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("primes.wasm: 16 items, median of 1 run at each worker count"), "{out}");
    assert_eq!(lines[1].split_whitespace().collect::<Vec<_>>(), ["processes", "time", "speedup", "efficiency"]);
    // From the smallest count up, whatever the order given.
    let first: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!((first[0], first[3], first[4], first[5]), ("1", "1.00x", "100", "%"), "{out}");
    assert_eq!(lines[3].split_whitespace().next(), Some("2"));
    assert_eq!(lines.len(), 4, "{out}");
}

#[test]
fn bench_and_map_refuse_bad_worker_lists_naming_them() {
    let input = root().join("examples").join("primes.txt");
    for (list, says) in [("0", "at least 1"), ("1,1", "twice"), ("1,x", "`x` is not a number")] {
        let mut c = wpool();
        c.args(["bench", "-j", list]).arg(kernel_path("primes")).arg(&input);
        let o = run(c, b"");
        assert_eq!(o.status.code(), Some(2), "{list}");
        assert!(stderr(&o).contains(says), "{list}: {}", stderr(&o));
        assert!(o.stdout.is_empty());
    }
    let mut c = wpool();
    c.args(["map", "-j", "1,2"]).arg(kernel_path("primes")).arg(&input);
    let o = run(c, b"");
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("-j 1,2: a list of worker counts is for `wpool bench`"), "{}", stderr(&o));
    let empty = temp_file(b"");
    let mut c = wpool();
    c.args(["bench", "-j", "1"]).arg(kernel_path("primes")).arg(empty.path());
    let o = run(c, b"");
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no items"), "{}", stderr(&o));
}

#[test]
fn a_large_init_configuration_reaches_every_worker_whole() {
    // A `Hello` this large does not fit the pipe a forked worker starts
    // with: it is written as the first frame instead, once the worker reads.
    let mut table = TABLE.to_vec();
    for i in 0..40_000 {
        table.extend_from_slice(format!("filler{i}\tvalue{i}\n").as_bytes());
    }
    assert!(table.len() > 512 << 10);
    let mut p = Pool::builder(kernel("dict")).workers(2).chunksize(Chunksize::Fixed(1)).init(table).build().unwrap();
    let items: Vec<&str> = std::iter::repeat_n(["the cat", "filler39999"], 20).flatten().collect();
    for (i, r) in p.map(items).unwrap().into_iter().enumerate() {
        let want: &[u8] = if i % 2 == 0 { b"the chat" } else { b"value39999" };
        assert_eq!(r.as_deref().unwrap(), want, "item {i}");
    }
    assert_eq!(p.worker_pids().len(), 2);
}
