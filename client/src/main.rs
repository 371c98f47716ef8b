//! fracmap: the PACS-side command-line client of `fracmap-server`.
//!
//! - [`connection`]: the server's address, TLS and token.
//! - [`info`]: `fracmap info` and `fracmap models`.
//! - [`segment`]: `fracmap segment`, the request and its answer; [`boxes`] parses the boxes
//!   it takes, [`assembly`] puts the answer's volumes together, [`outputs`] writes them.
//! - [`report`]: `fracmap report` and `segment --report`: a case's outputs as one HTML page.
//! - [`to_dicom`]: `fracmap to-dicom`: a NIfTI CT as a DICOM series, to try DICOM input.

mod assembly;
mod boxes;
mod connection;
mod info;
mod load;
mod outputs;
mod progress;
mod report;
mod segment;
mod to_dicom;

use std::time::Duration;

use clap::{Parser, Subcommand};
use tonic::{Code, Status};

use crate::connection::{ConnectArgs, connect};
use crate::report::ReportArgs;
use crate::segment::SegmentArgs;
use crate::to_dicom::ToDicomArgs;

#[derive(Parser)]
#[command(name = "fracmap", version, about = "Command-line client of fracmap-server (gRPC)")]
struct Cli {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Seconds a call may take, upload and answer included (its gRPC deadline).
    #[arg(long, global = true, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..), help_heading = "Server")]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print what the server runs (version, ONNX Runtime, execution provider, models) and its health.
    Info,
    /// List the models the server can segment with, one a line.
    Models,
    /// Send a CT with its vertebrae; write the fracture probability map, draft mask, heat maps
    /// and a summary into --out.
    Segment(SegmentArgs),
    /// Write report.html into a folder `segment` wrote: the vertebrae, heat maps and 3D views.
    Report(ReportArgs),
    /// Load-test the server (--server is the target): send one CT again and again, in a closed
    /// loop or at a fixed --rate; report throughput, latency percentiles and errors by status.
    Load(load::LoadArgs),
    /// Write a NIfTI CT as a DICOM CT series (one file a slice, new UIDs, a made-up patient),
    /// to try `segment` with DICOM input.
    ToDicom(ToDicomArgs),
}

impl Command {
    fn name(&self) -> &'static str {
        match self {
            Command::Info => "info",
            Command::Models => "models",
            Command::Segment(_) => "segment",
            Command::Report(_) => "report",
            Command::Load(_) => "load",
            Command::ToDicom(_) => "to-dicom",
        }
    }
}

// Several threads: `fracmap load` keeps many requests in flight and must not be the bottleneck.
#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let command = cli.command.name();
    if let Err(error) = run(cli).await {
        std::process::exit(report(command, &error));
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    // These read and write files only: no server to reach.
    match &cli.command {
        Command::Report(args) => return report::report(args),
        Command::ToDicom(args) => return to_dicom::to_dicom(args),
        _ => {}
    }
    let connection = connect(&cli.connect).await?;
    let timeout = Duration::from_secs(cli.timeout);
    match cli.command {
        Command::Info => info::info(&connection, &cli.connect.server, timeout).await,
        Command::Models => info::models(&connection, timeout).await,
        Command::Segment(args) => segment::segment(connection.fracmap(), args, timeout).await,
        Command::Load(args) => load::load(connection, &cli.connect, args, timeout).await,
        Command::Report(_) | Command::ToDicom(_) => unreachable!("answered above without a connection"),
    }
}

/// Prints the error on stderr and returns the exit code: 2 when the server refused the
/// request as malformed or naming what it does not have (the caller must change it), else 1.
fn report(command: &str, error: &anyhow::Error) -> i32 {
    let Some(status) = error.chain().find_map(|e| e.downcast_ref::<Status>()) else {
        eprintln!("fracmap: {error:#}");
        return 1;
    };
    eprintln!("fracmap: {command}: {}: {}", code_name(status.code()), status.message());
    match status.code() {
        Code::InvalidArgument | Code::NotFound => 2,
        _ => 1,
    }
}

/// A gRPC status code as the specification spells it: `InvalidArgument` -> `INVALID_ARGUMENT`.
fn code_name(code: Code) -> String {
    let mut name = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_are_named_as_grpc_names_them() {
        assert_eq!(code_name(Code::InvalidArgument), "INVALID_ARGUMENT");
        assert_eq!(code_name(Code::Unavailable), "UNAVAILABLE");
        assert_eq!(code_name(Code::Ok), "OK");
    }

    #[test]
    fn the_exit_code_is_2_for_a_request_to_change() {
        let report_of = |status: Status| report("segment", &anyhow::Error::from(status));
        assert_eq!(report_of(Status::not_found("no model x")), 2);
        assert_eq!(report_of(Status::resource_exhausted("queue full")), 1);
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
