//! `wpool pipeline --stage K1 --stage K2 …`: items through several kernels
//! in a row, each stage a pool of its own, results in input order.

use anyhow::Result;
use wpool::Error;

use std::path::{Path, PathBuf};

use super::driver::{finish, items, map_kernel, printer, report_end, result_options, Setup, PRINTED_SO_FAR};
use crate::exit::Exit;
use crate::flags::PipelineCmd;
use crate::joblog::{self, Joblog, RunInfo};
use crate::signals::Interrupts;

pub fn run(cmd: PipelineCmd) -> Result<Exit> {
    let interrupts = Interrupts::install()?;
    let args = &cmd.run;
    let jobs: Vec<usize> = match &cmd.jobs_per_stage {
        Some(list) => {
            let jobs = list
                .split(',')
                .map(|n| crate::units::parse_workers(n).map_err(|e| anyhow::anyhow!("--jobs-per-stage {list}: {e}")))
                .collect::<Result<Vec<usize>>>()?;
            if jobs.len() != cmd.stages.len() {
                anyhow::bail!("--jobs-per-stage {list}: {} numbers for {} stages", jobs.len(), cmd.stages.len());
            }
            jobs
        }
        None => Vec::new(),
    };
    let kernels = cmd.stages.iter().map(|k| map_kernel(k, &args.inputs)).collect::<Result<Vec<_>>>()?;
    let names: Vec<String> = kernels.iter().map(|k| k.name().to_string()).collect();
    let setup = Setup::new(args)?;
    let (items, sources) = items(args)?;
    setup.check_one_port(args, "a pipeline")?;
    let jobs: Vec<usize> = (0..kernels.len()).map(|i| jobs.get(i).copied().unwrap_or(setup.jobs)).collect();
    let all: usize = jobs.iter().sum();
    let mut pools = Vec::new();
    for (i, (kernel, workers)) in kernels.into_iter().zip(jobs).enumerate() {
        pools.push(setup.start(setup.builder(kernel, args, workers, all), args, &format!(" stage {}:", i + 1))?);
    }
    pools.iter().for_each(|p| interrupts.watch(p));
    let read_error = items.error();
    let mut printer = printer(args, &items, &sources);
    let mut pipeline = wpool::pipeline::Pipeline::new(pools)?;
    let joblog = match &args.joblog {
        Some(path) => {
            let stages: Vec<&Path> = cmd.stages.iter().map(PathBuf::as_path).collect();
            Some(Joblog::start(path, RunInfo::new(&stages, result_options(args, None, setup.jobs)?)?)?)
        }
        None => None,
    };
    let origins = items.origins();
    let items = joblog::hashed(items, joblog.as_ref());
    let mut failed = false;
    let mut write_error = None;
    let outcome = pipeline.run(items, |index, result| {
        let result = result.map(wpool::SharedBytes::from).map_err(|f| {
            let mut e = f.error;
            e.message = format!("stage {} ({}): {}", f.stage + 1, names[f.stage], e.message);
            Box::new(e)
        });
        failed |= result.is_err();
        if let Some(j) = &joblog {
            j.outcome(index.get(), origins.lock().unwrap().describe(index.get()), &result, None);
        }
        if let Err(e) = printer.item(index.get(), result, true) {
            write_error = Some(e);
            return false;
        }
        !(failed && args.fail_fast)
    });
    let outcome = outcome.and(write_error.map_or(Ok(()), |e| Err(Error::Io(e))));
    for (i, pool) in pipeline.stages().iter().enumerate() {
        report_end(pool, args, &format!(" stage {}:", i + 1));
    }
    drop(pipeline);
    joblog::end(joblog, finish(outcome, printer, &interrupts, &read_error, PRINTED_SO_FAR, failed))
}
