//! Runs submitted to a batch scheduler (Slurm's `sbatch`, Grid Engine's `qsub`): what
//! the schedulers' executors share. The run's directory is made on the shared job
//! root with a job script in it; the script runs the server binary's `supervise` on
//! the node, so the command runs under the same supervisor as a local one
//! (`supervisor.rs`), writing its output frames and exit status into the directory.
//! The server follows those files (`supervised.rs`) and asks the scheduler only
//! whether the job is still there ([`BatchJob`]), so the job outlives the server and
//! even its machine, and its exit status is the command's own, never a scheduler
//! client's guess (`qsub -sync y` says 0 for a deleted job).
//!
//! The run's directory holds `job.sh` (the script, every word quoted), `node.log`
//! (what the scheduler and the script said on the node), and, once submitted,
//! [`BATCH_RECORD`] (`SCHEDULER JOB_ID`), which a restarted server reads to find the
//! job again.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::executor::Launch;
use crate::executor::process_run::Chunk;
use crate::executor::supervised::{self, BatchJob, Supervised};

/// The file in a batch run's directory that names its scheduler and job id.
pub const BATCH_RECORD: &str = "batch";
/// The file the scheduler writes the job's own stdout and stderr to (not the
/// command's: its supervisor keeps those).
pub const NODE_LOG: &str = "node.log";
/// The job script's name in the run's directory.
pub const SCRIPT: &str = "job.sh";

/// A batch run's directory, made with its script, not yet submitted.
pub struct Prepared {
    pub dir: PathBuf,
    merged: bool,
}

impl Prepared {
    /// The script to submit.
    pub fn script(&self) -> PathBuf {
        self.dir.join(SCRIPT)
    }

    /// Where the scheduler is told to write the job's own output.
    pub fn node_log(&self) -> PathBuf {
        self.dir.join(NODE_LOG)
    }

    /// The scheduler took the job as `job_id`: written down (for a restarted server)
    /// before the run is followed.
    pub fn submitted(self, scheduler: &str, job_id: &str, job: Arc<dyn BatchJob>) -> io::Result<Submitted> {
        std::fs::write(self.dir.join(BATCH_RECORD), format!("{scheduler} {job_id}\n"))?;
        let (run, chunks) = Supervised::following(self.dir, 0, self.merged, None, Some(job), false);
        Ok(Submitted { run, chunks })
    }

    /// The scheduler refused the job: its directory goes.
    pub fn refused(self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A submitted batch run, to follow as a local supervised run is followed.
pub struct Submitted {
    pub run: Supervised,
    pub chunks: mpsc::Receiver<Chunk>,
}

/// Makes a run directory under `root` for `launch` with its job script, which runs
/// `supervisor` (this server's binary, at a path every node sees) as the launch's
/// supervisor in it.
pub fn prepare(root: &Path, supervisor: &Path, launch: &Launch) -> io::Result<Prepared> {
    let dir = supervised::make_run_dir(root)?;
    let mut words: Vec<&OsStr> = vec![supervisor.as_os_str(), OsStr::new("supervise"), dir.as_os_str()];
    if launch.merged_output {
        words.push(OsStr::new("--merged"));
    }
    words.push(OsStr::new("--"));
    words.push(&launch.program);
    words.extend(launch.args.iter().map(|arg| arg.as_os_str()));
    let mut script = b"#!/bin/sh\n# lrpymrpc: the command runs under its supervisor, which writes its output and\n\
                       # exit status beside this script for the server to follow.\nexec"
        .to_vec();
    for word in words {
        script.push(b' ');
        script.extend_from_slice(&quoted(word.as_bytes()));
    }
    script.push(b'\n');
    let written = {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let new = |mode| std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).clone();
        // The output file is there before the job is: the server follows it from now.
        new(0o600)
            .open(dir.join(supervised::OUTPUT))
            .and_then(|_| new(0o700).open(dir.join(SCRIPT)))
            .and_then(|mut file| file.write_all(&script))
    };
    if let Err(error) = written {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(error);
    }
    Ok(Prepared { dir, merged: launch.merged_output })
}

/// One word for `sh`, in single quotes: the shell takes it as it is (no expansion, no
/// splitting), whatever bytes it holds.
fn quoted(word: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(word.len() + 2);
    out.push(b'\'');
    for &byte in word {
        if byte == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(byte);
        }
    }
    out.push(b'\'');
    out
}

/// The server binary to run on nodes: this one, by the path it was started from (an
/// upgrade that replaced the file leaves the new one there, which reads the same run
/// directories).
pub fn this_binary() -> io::Result<PathBuf> {
    let path = std::env::current_exe()?;
    let text = path.as_os_str().as_bytes();
    Ok(match text.strip_suffix(b" (deleted)") {
        Some(kept) => PathBuf::from(OsStr::from_bytes(kept)),
        None => path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_word_of_a_job_script_reaches_the_command_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let words = ["plain", "it's", "$HOME", "a b", "`id`", "\"q\"", "exit 3;", "*", ""];
        let launch = Launch {
            program: "/bin/echo".into(),
            args: words.iter().map(Into::into).collect(),
            env: Vec::new(),
            dir: dir.path().to_path_buf(),
            merged_output: false,
            progress_updates: false,
            confine: Default::default(),
            adoptable: false,
        };
        // A stand-in supervisor that prints its arguments one per line.
        let prepared = prepare(dir.path(), Path::new("/usr/bin/printf"), &launch).unwrap();
        let script = std::fs::read_to_string(prepared.script()).unwrap();
        let script = script.replace("'/usr/bin/printf'", "'/usr/bin/printf' '%s\\n'");
        let output = std::process::Command::new("/bin/sh").arg("-c").arg(&script).output().unwrap();
        let printed = String::from_utf8(output.stdout).unwrap();
        let mut expected = vec![prepared.dir.to_string_lossy().into_owned(), "--".into(), "/bin/echo".into()];
        expected.extend(words.iter().map(|word| word.to_string()));
        assert_eq!(printed.lines().skip(1).collect::<Vec<_>>(), expected);
        assert!(prepared.dir.starts_with(dir.path().join(supervised::RUNS_DIR)));
    }
}
