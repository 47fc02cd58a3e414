//! Writes a synthetic RVTools export of any size, as xlsx and/or CSVs, for the
//! planner benchmark (hack/bench.sh --plan). Not committed data: generate it.
//!
//!   cargo run --release -p portgroupctl --example gen_estate -- \
//!       --vms 10000 --nics 25000 --portgroups 500 --xlsx big.xlsx --csv big-csv/

// A benchmark input generator: it fails by panicking, so unwrap and expect are fine.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/estate.rs"]
mod estate;

use std::path::PathBuf;

fn main() {
    let mut vms = 10_000usize;
    let mut nics = 25_000usize;
    let mut portgroups = 500usize;
    let mut xlsx: Option<PathBuf> = None;
    let mut csv: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{arg} needs a value")))
        };
        match arg.as_str() {
            "--vms" => vms = value().parse().unwrap_or_else(|_| usage("--vms: a number")),
            "--nics" => {
                nics = value()
                    .parse()
                    .unwrap_or_else(|_| usage("--nics: a number"))
            }
            "--portgroups" => {
                portgroups = value()
                    .parse()
                    .unwrap_or_else(|_| usage("--portgroups: a number"))
            }
            "--xlsx" => xlsx = Some(value().into()),
            "--csv" => csv = Some(value().into()),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    if vms == 0 || portgroups == 0 || nics < vms || portgroups > 4094 {
        usage("need vms > 0, nics >= vms, 0 < portgroups <= 4094");
    }
    let estate = estate::big(vms, nics, portgroups);
    if let Some(path) = &xlsx {
        estate.write_xlsx(path);
        eprintln!("wrote {}", path.display());
    }
    if let Some(dir) = &csv {
        estate.write_csv_dir(dir, ',');
        eprintln!("wrote {}", dir.display());
    }
}

fn usage(why: &str) -> ! {
    eprintln!("gen_estate: {why}\nusage: gen_estate [--vms N] [--nics N] [--portgroups N] [--xlsx FILE] [--csv DIR]");
    std::process::exit(2)
}
