//! The Python wheels end to end (issue 18): `packaging/build_wheels.py` builds
//! `lrpymrpc-client` (maturin) and `lrpymrpc-compat`; both install offline into a fresh
//! virtual environment; `python3 -m lrPymRPC` and `python3 -m lrpymrpc` run whole jobs
//! with the same arguments and exit status; the upstream package beside the compat one
//! is said, not silently run over.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::env::{PROCESS_LIMIT, TestEnv, output_within};

/// maturin: `LRPYMRPC_MATURIN`, else the one `.ci/run` installs under
/// `target/ci-maturin-venv`, else on PATH.
fn maturin() -> PathBuf {
    let maturin = crate::env::venv_program("LRPYMRPC_MATURIN", "ci-maturin-venv", "maturin", "maturin");
    if !maturin.exists() {
        crate::env::needed(
            "maturin",
            "python3 -m venv target/ci-maturin-venv && target/ci-maturin-venv/bin/pip install maturin",
        );
    }
    maturin
}

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// Both wheels, built once for the whole test run (two cargo builds at once would
/// only wait for each other) under the tests' own scratch directory.
fn wheels(maturin: &Path) -> &'static Path {
    static WHEELS: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    WHEELS.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("wheels");
        let _ = std::fs::remove_dir_all(&out);
        build_wheels(maturin, &out);
        out
    })
}

fn build_wheels(maturin: &Path, out: &Path) {
    let built = output_within(
        Command::new("python3")
            .arg(repo_file("packaging/build_wheels.py"))
            .args(["--debug", "--out"])
            .arg(out)
            .arg("--maturin")
            .arg(maturin),
        PROCESS_LIMIT,
    );
    assert!(built.status.success(), "build_wheels.py: {}", String::from_utf8_lossy(&built.stderr));
    let wheels = String::from_utf8_lossy(&built.stdout).into_owned();
    assert!(wheels.contains("lrpymrpc_client-") && wheels.contains("lrpymrpc_compat-"), "{wheels}");
}

/// Installs the compat wheel (which pulls in the client) offline into a new virtual
/// environment under `root`; returns its python.
fn installed(maturin: &Path, root: &Path) -> PathBuf {
    let out = wheels(maturin);
    let venv = root.join("venv");
    let made = output_within(Command::new("python3").args(["-m", "venv"]).arg(&venv), PROCESS_LIMIT);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let python = venv.join("bin/python");
    let pip = output_within(
        Command::new(&python)
            .args(["-m", "pip", "install", "--no-index", "--disable-pip-version-check", "--find-links"])
            .arg(out)
            .arg("lrpymrpc-compat"),
        PROCESS_LIMIT,
    );
    assert!(pip.status.success(), "pip: {}", String::from_utf8_lossy(&pip.stderr));
    python
}

#[test]
fn the_wheels_install_offline_and_python_m_lrpymrpc_runs_whole_jobs() {
    let maturin = maturin();
    let env = TestEnv::new();
    env.write("source/input.txt", "from the wheel\n");
    let python = installed(&maturin, env.root.path());
    let job = |module: &str, command: &str| {
        let mut run = Command::new(&python);
        run.current_dir(&env.work)
            .env("LRPYMRPC_CONFIG", "")
            .env("XDG_CACHE_HOME", env.root.path().join("cache"))
            .args(["-m", module, "--SERVER_IP", "127.0.0.1", "--SERVER_PORT", &env.addr.port().to_string()])
            .arg("--TLS_CONFIG_DIR")
            .arg(&env.tls)
            .args(["--CMD", command]);
        output_within(&mut run, PROCESS_LIMIT)
    };
    // The unchanged Makefile's command line: `python3 -m lrPymRPC ...`.
    let output = job("lrPymRPC", "cat source/input.txt; exit 3");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(3), "the command's exit status: {stdout}");
    assert!(stdout.contains("]:from the wheel"), "{stdout}");
    let output = job("lrpymrpc", "echo direct");
    assert!(output.status.success() && String::from_utf8_lossy(&output.stdout).contains("]:direct"));
    // The binary is on the environment's PATH too.
    let version = output_within(Command::new(python.with_file_name("lrpymrpc")).arg("--version"), PROCESS_LIMIT);
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("lrpymrpc "), "{version:?}");
}

#[test]
fn the_upstream_package_beside_the_compat_one_is_said_every_time() {
    let maturin = maturin();
    let root = tempfile::tempdir().unwrap();
    let python = installed(&maturin, root.path());
    let quiet = output_within(Command::new(&python).args(["-m", "lrPymRPC", "--version"]), PROCESS_LIMIT);
    assert!(quiet.status.success() && quiet.stderr.is_empty(), "{quiet:?}");
    // As if `pip install lrPymRPC` had run here too (its files and ours are the same).
    let site = output_within(
        Command::new(&python).args(["-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]),
        PROCESS_LIMIT,
    );
    let site = PathBuf::from(String::from_utf8_lossy(&site.stdout).trim());
    std::fs::create_dir_all(site.join("lrPymRPC-0.2.9.dist-info")).unwrap();
    std::fs::write(
        site.join("lrPymRPC-0.2.9.dist-info/METADATA"),
        "Metadata-Version: 2.1\nName: lrPymRPC\nVersion: 0.2.9\n",
    )
    .unwrap();
    let warned = output_within(Command::new(&python).args(["-m", "lrPymRPC", "--version"]), PROCESS_LIMIT);
    let stderr = String::from_utf8_lossy(&warned.stderr);
    assert!(stderr.contains("the upstream lrPymRPC package is installed in this environment too"), "{stderr}");
    assert!(stderr.contains("hint: keep one"), "{stderr}");
}
