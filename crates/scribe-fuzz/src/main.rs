//! `scribe-fuzz`: runs the fuzz targets for a time or execution budget and prints, per target,
//! the executions, executions per second, crashes and corpus size. Exits non-zero if any target
//! crashed; the crashing inputs are in `crates/scribe-fuzz/crashes/`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use scribe_fuzz::fuzzer::{self, Budget, Dirs};
use scribe_fuzz::targets;

/// Fuzz Scribe's decoders of untrusted bytes.
#[derive(Debug, Parser)]
#[command(name = "scribe-fuzz")]
struct Args {
    /// Targets to run (all when none is named). `--list` shows them.
    targets: Vec<String>,
    /// Seconds to run each target.
    #[arg(long, env = "SCRIBE_FUZZ_SECONDS", default_value_t = 30.0)]
    seconds: f64,
    /// Stop each target after this many executions, even if time is left.
    #[arg(long, env = "SCRIBE_FUZZ_EXECS")]
    execs: Option<u64>,
    /// Seed of the mutator's PRNG (a run is reproducible from its seed and corpus); random when
    /// absent.
    #[arg(long, env = "SCRIBE_FUZZ_SEED")]
    seed: Option<u64>,
    /// The corpus root (`<corpus>/<target>/` holds a target's seed files).
    #[arg(long, env = "SCRIBE_FUZZ_CORPUS")]
    corpus: Option<PathBuf>,
    /// Where crashing inputs are written, as `<target>-<hash>`.
    #[arg(long, env = "SCRIBE_FUZZ_CRASHES")]
    crashes: Option<PathBuf>,
    /// Run the inputs in these files (crash files, say) once each on the first target, named
    /// before this flag (`scribe-fuzz log_dir --replay FILE`), and report what happened, instead
    /// of fuzzing.
    #[arg(long, num_args = 1.., value_name = "FILE")]
    replay: Vec<PathBuf>,
    /// Write each target's built-in seeds (made by the real encoders) into its corpus directory
    /// as `seed-<hash>`, and exit.
    #[arg(long)]
    write_seeds: bool,
    /// List the targets and exit.
    #[arg(long)]
    list: bool,
}

fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    if args.list {
        for t in targets::all() {
            println!("{:<14} {}", t.name, t.about);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let chosen = if args.targets.is_empty() {
        targets::all()
    } else {
        args.targets
            .iter()
            .map(|n| {
                targets::find(n).ok_or_else(|| anyhow::anyhow!("no target {n:?} (see --list)"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    if !args.replay.is_empty() {
        let target = chosen[0];
        let mut failed = false;
        for path in &args.replay {
            let input =
                std::fs::read(path).map_err(|e| anyhow::anyhow!("read {}: {e}", path.display()))?;
            match fuzzer::run_one(&target, &input) {
                Ok(accepted) => println!("{}: ok (accepted: {accepted})", path.display()),
                Err(panic) => {
                    failed = true;
                    println!("{}: PANIC {panic}", path.display());
                }
            }
        }
        return Ok(if failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        });
    }
    let mut dirs = Dirs::in_tree();
    if let Some(c) = args.corpus {
        dirs.corpus = c;
    }
    if let Some(c) = args.crashes {
        dirs.crashes = c;
    }
    if args.write_seeds {
        for t in &chosen {
            let dir = dirs.corpus.join(t.name);
            std::fs::create_dir_all(&dir)
                .map_err(|e| anyhow::anyhow!("create {}: {e}", dir.display()))?;
            let seeds = (t.seeds)();
            for s in &seeds {
                let path = dir.join(format!("seed-{:016x}", fuzzer::hash(s)));
                std::fs::write(&path, s)
                    .map_err(|e| anyhow::anyhow!("write {}: {e}", path.display()))?;
            }
            println!("{}: {} seeds in {}", t.name, seeds.len(), dir.display());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let budget = Budget {
        time: Duration::from_secs_f64(args.seconds.max(0.0)),
        execs: args.execs,
    };
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    println!("seed {seed}");
    println!(
        "{:<14} {:>12} {:>10} {:>8} {:>10} {:>8}",
        "target", "execs", "execs/s", "crashes", "accepted", "corpus"
    );
    let mut crashed = false;
    for t in &chosen {
        let stats = fuzzer::fuzz(t, budget, seed, &dirs)
            .map_err(|e| anyhow::anyhow!("fuzz {}: {e}", t.name))?;
        println!(
            "{:<14} {:>12} {:>10.0} {:>8} {:>10} {:>4} → {}",
            stats.target,
            stats.execs,
            stats.execs_per_sec(),
            stats.crashes.len(),
            stats.accepted,
            stats.corpus_start,
            stats.corpus_end
        );
        for c in &stats.crashes {
            crashed = true;
            println!("  crash: {} (input {})", c.panic, c.input.display());
        }
    }
    Ok(if crashed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
