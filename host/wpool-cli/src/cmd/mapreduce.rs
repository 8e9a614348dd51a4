//! `wpool mapreduce --map M --reduce R`: map every item to `key<TAB>value`
//! lines, reduce each key's values, print the keys sorted.

use anyhow::Result;
use wpool::{Error, Kernel};

use super::driver::{finish, items, map_kernel, printer, result_options, Setup};
use crate::exit::Exit;
use crate::flags::MapReduceCmd;
use crate::joblog::{self, Joblog, RunInfo};
use crate::signals::Interrupts;

pub fn run(cmd: MapReduceCmd) -> Result<Exit> {
    let interrupts = Interrupts::install()?;
    let args = &cmd.run;
    let map = map_kernel(&cmd.map, &[])?;
    let reduce = Kernel::from_file(&cmd.reduce)?;
    super::driver::warn_about_cache(&reduce);
    if !reduce.is_reducer() {
        anyhow::bail!(
            "{}: not a reducer: --reduce needs a kernel of world `wpool:kernel/reducer`",
            cmd.reduce.display()
        );
    }
    let setup = Setup::new(args)?;
    let (items, sources) = items(args)?;
    setup.check_one_port(args, "mapreduce")?;
    let all = 2 * setup.jobs;
    let map = setup.start(setup.builder(map, args, setup.jobs, all), args, " map:")?;
    let reduce = setup.start(setup.builder(reduce, args, setup.jobs, all), args, " reduce:")?;
    interrupts.watch(&map);
    interrupts.watch(&reduce);
    let read_error = items.error();
    let mut printer = printer(args, &items, &sources);
    let mut mr = wpool::mapreduce::MapReduce::new(map, reduce)?;
    let joblog = match &args.joblog {
        Some(path) => {
            Some(Joblog::start(path, RunInfo::new(&[&cmd.map, &cmd.reduce], result_options(args, None, setup.jobs)?)?)?)
        }
        None => None,
    };
    let origins = items.origins();
    let items = joblog::hashed(items, joblog.as_ref());
    let mut failed = false;
    let mut write_error = None;
    let outcome = mr.run(items, |index, result| {
        if let Some(j) = &joblog {
            j.record(index.get(), origins.lock().unwrap().describe(index.get()), result.as_ref().map(|()| None), None);
        }
        let Err(e) = result else {
            printer.tick();
            return true;
        };
        failed = true;
        if let Err(err) = printer.item(index.get(), Err(Box::new(e)), false) {
            write_error.get_or_insert(err);
            return false;
        }
        !args.fail_fast
    });
    let outcome = match (outcome, write_error) {
        (_, Some(e)) => Err(Error::Io(e)),
        // After --fail-fast stopped the run nothing was reduced.
        (Ok(keys), None) => keys.into_iter().try_for_each(|(key, result)| {
            failed |= result.is_err();
            printer.key(&key, result).map_err(Error::Io)
        }),
        (Err(e), None) => Err(e),
    };
    joblog::end(joblog, finish(outcome, printer, &interrupts, &read_error, "nothing after it was read", failed))
}
