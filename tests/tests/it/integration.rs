//! Make and CMake integration with the real tools: the committed examples build, do
//! nothing the second time, rerun only the step whose input changed, run steps in
//! parallel, and fail properly (non-zero, no output that looks up to date).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use crate::env::{CLIENT, TestEnv};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The files of `dirs` the repository holds (`git ls-files`): what a user built in
/// the examples (`build*/` with its links, `lib/`) is not theirs. Outside a git
/// checkout, every regular file below them, links passed over.
fn example_files(dirs: &[&str]) -> Vec<PathBuf> {
    let listed = Command::new("git").current_dir(repo()).args(["ls-files", "-z", "--"]).args(dirs).output();
    if let Some(listed) = listed.ok().filter(|output| output.status.success() && !output.stdout.is_empty()) {
        return listed
            .stdout
            .split(|b| *b == 0)
            .filter(|p| !p.is_empty())
            .map(|p| PathBuf::from(String::from_utf8_lossy(p).as_ref()))
            .collect();
    }
    fn walk(dir: &Path, rel: &Path, files: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
            let kind = entry.file_type().unwrap();
            let rel = rel.join(entry.file_name());
            if kind.is_dir() {
                walk(&entry.path(), &rel, files);
            } else if kind.is_file() {
                files.push(rel);
            }
        }
    }
    let mut files = Vec::new();
    for dir in dirs {
        walk(&repo().join(dir), Path::new(dir), &mut files);
    }
    files
}

/// Copies the repository's files of `dirs` below `root`, laid out as in the repository.
fn copy_from_repo(dirs: &[&str], root: &Path) {
    for rel in example_files(dirs) {
        let (from, to) = (repo().join(&rel), root.join(&rel));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("copying `{}`: {e}", from.display()));
    }
}

/// The examples and integration files, laid out as in the repository, under `work`.
fn copy_examples(env: &TestEnv) -> PathBuf {
    copy_from_repo(&["examples/make", "examples/cmake", "examples/cellchar", "integration"], &env.work);
    env.work.join("examples")
}

/// make's variables that point the snippet at the test server.
fn make_variables(env: &TestEnv) -> Vec<String> {
    vec![
        format!("LRPYMRPC={CLIENT}"),
        "LRPYMRPC_SERVER_IP=127.0.0.1".into(),
        format!("LRPYMRPC_SERVER_PORT={}", env.addr.port()),
        format!("LRPYMRPC_TLS_CONFIG_DIR={}", env.tls.display()),
    ]
}

fn run(command: &mut Command) -> (bool, String) {
    // The developer's own settings must not leak in.
    command.env("LRPYMRPC_CONFIG", "").env_remove("MAKEFLAGS");
    let Output { status, stdout, stderr } = crate::env::output_within(command, crate::env::PROCESS_LIMIT);
    (status.success(), format!("{}{}", String::from_utf8_lossy(&stdout), String::from_utf8_lossy(&stderr)))
}

fn make(env: &TestEnv, dir: &Path, extra: &[&str]) -> (bool, String) {
    run(Command::new(crate::env::tool("make", "make")).current_dir(dir).args(make_variables(env)).args(extra))
}

/// Moves a file's modification time to now, as an edit would (after a pause, so it
/// is newer than outputs made just before, whatever the file system's resolution).
fn touch(path: &Path) {
    std::thread::sleep(Duration::from_millis(50));
    let file = std::fs::File::options().append(true).open(path).unwrap();
    file.set_modified(SystemTime::now()).unwrap();
}

fn modified(path: &Path) -> SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

#[test]
fn the_make_example_builds_then_does_nothing_then_reruns_when_a_cell_changes() {
    let env = TestEnv::new();
    let example = copy_examples(&env).join("make");
    let (ok, log) = make(&env, &example, &[]);
    assert!(ok, "{log}");
    let library = std::fs::read_to_string(example.join("lib/MAKE130.lib")).unwrap();
    assert!(library.contains("cell (buf)") && library.contains("cell (nor2)"), "{library}");
    assert!(example.join("lib/MAKE130.md").is_file());

    let (ok, log) = make(&env, &example, &[]);
    assert!(ok && log.contains("Nothing to be done") && !log.contains("Upload"), "{log}");

    touch(&example.join("cells/nor2.sp"));
    let (ok, log) = make(&env, &example, &[]);
    assert!(ok && log.contains("Upload") && !log.contains("make_wheel.py"), "only the remote step reran: {log}");

    // The installed binary prints the same file.
    let printed = crate::env::output_within(Command::new(CLIENT).args(["snippet", "make"]), crate::env::PROCESS_LIMIT);
    assert_eq!(printed.stdout, std::fs::read(repo().join("integration/lrpymrpc.mk")).unwrap());
}

#[test]
fn with_the_action_cache_make_clean_then_make_runs_no_remote_command_again() {
    let env = TestEnv::configured(|config| config.action_cache = true);
    let example = copy_examples(&env).join("make");
    let (ok, log) = make(&env, &example, &["LRPYMRPC_CACHE=1"]);
    assert!(ok && log.contains("Upload") && !log.contains("served from cache"), "{log}");
    let library = std::fs::read(example.join("lib/MAKE130.lib")).unwrap();
    // The seed's own instructions: `make clean; make`.
    let (ok, log) = make(&env, &example, &["clean"]);
    assert!(ok && !example.join("lib").exists(), "{log}");
    let (ok, log) = make(&env, &example, &["LRPYMRPC_CACHE=1"]);
    assert!(ok && log.contains("make_wheel.py"), "the local step ran again: {log}");
    assert!(log.contains("served from cache: ran "), "the remote step did not: {log}");
    assert_eq!(std::fs::read(example.join("lib/MAKE130.lib")).unwrap(), library);
    assert!(example.join("lib/MAKE130.md").is_file());
    // Without LRPYMRPC_CACHE the step runs as ever.
    make(&env, &example, &["clean"]);
    let (ok, log) = make(&env, &example, &[]);
    assert!(ok && !log.contains("served from cache"), "{log}");
}

/// A Makefile with `steps` remote steps `outN.txt <- inN/data.txt`, each command given.
fn write_project(env: &TestEnv, commands: &[&str]) -> PathBuf {
    let project = env.work.join("project");
    copy_from_repo(&["integration"], &project);
    let mut makefile = String::from("include integration/lrpymrpc.mk\n\n");
    let outputs: Vec<String> = (1..=commands.len()).map(|n| format!("out{n}.txt")).collect();
    makefile.push_str(&format!("all: {}\n\n", outputs.join(" ")));
    for (index, command) in commands.iter().enumerate() {
        let n = index + 1;
        std::fs::create_dir_all(project.join(format!("in{n}"))).unwrap();
        std::fs::write(project.join(format!("in{n}/data.txt")), format!("input number {n}\n")).unwrap();
        makefile.push_str(&format!("$(eval $(call lrpymrpc_step,out{n}.txt,in{n},{command}))\n"));
    }
    std::fs::write(project.join("Makefile"), makefile).unwrap();
    project
}

#[test]
fn make_j4_runs_four_remote_steps_at_once_and_a_change_reruns_only_its_step() {
    let env = TestEnv::new();
    // `$$` reaches the remote shell as `$`, and a quote in CMD survives the recipe's quoting.
    let commands: Vec<String> = (1..=4)
        .map(|n| format!("echo \"step {n}'s $$(( {n} * 10 ))\"; sleep 1; tr a-z A-Z < in{n}/data.txt > out{n}.txt"))
        .collect();
    let commands: Vec<&str> = commands.iter().map(String::as_str).collect();
    let project = write_project(&env, &commands);
    // `make -n` shows the whole command, CMD included.
    let (ok, dry) = make(&env, &project, &["-n", "out3.txt"]);
    assert!(ok && dry.contains("--CMD 'echo \"step 3'\\''s $(( 3 * 10 ))\"; sleep 1; tr a-z A-Z"), "{dry}");
    assert!(env.job_dirs().is_empty(), "make -n ran nothing");
    let (ok, log) = make(&env, &project, &["-j4"]);
    assert!(ok, "{log}");
    for n in 1..=4 {
        assert_eq!(
            std::fs::read_to_string(project.join(format!("out{n}.txt"))).unwrap(),
            format!("INPUT NUMBER {n}\n")
        );
        // Each step's lines say which step they belong to.
        let line = format!("[127.0.0.1:{} out{n}.txt]:step {n}'s {}", env.addr.port(), n * 10);
        assert!(log.contains(&line), "{line} in {log}");
    }
    touch(&project.join("in2/data.txt"));
    let (ok, log) = make(&env, &project, &["-j4"]);
    assert!(ok, "{log}");
    assert_eq!(log.matches("]:Upload\n").count(), 1, "one step reran: {log}");
    assert!(log.contains("Compress source=in2"), "{log}");
}

#[test]
fn a_failing_remote_step_stops_make_and_leaves_no_output_that_looks_up_to_date() {
    let env = TestEnv::new();
    let project = write_project(&env, &["echo half-written > out1.txt; exit 3", "echo never > elsewhere.txt"]);
    // An earlier output, older than its input: make must keep seeing it as out of date.
    let old = project.join("out1.txt");
    std::fs::write(&old, "earlier result\n").unwrap();
    std::fs::File::options().append(true).open(&old).unwrap().set_modified(SystemTime::UNIX_EPOCH).unwrap();
    let before = modified(&old);

    let (ok, log) = make(&env, &project, &["out1.txt"]);
    assert!(!ok, "make must fail: {log}");
    assert!(log.contains("exit status 3"), "{log}");
    assert_eq!(std::fs::read_to_string(&old).unwrap(), "earlier result\n");
    assert_eq!(modified(&old), before, "no newer timestamp on a failed output");
    let (ok, _) = make(&env, &project, &["out1.txt"]);
    assert!(!ok, "still out of date, so it runs (and fails) again");

    // A step that succeeds but does not make what it declared fails too: the rule's
    // `--strict` says so before the rule's own check would.
    let (ok, log) = make(&env, &project, &["out2.txt"]);
    assert!(!ok && log.contains("--strict: RESULT `out2.txt` did not come back"), "{log}");
}

fn cmake_generators() -> Vec<&'static str> {
    crate::env::tool("ninja", "ninja-build");
    vec!["Unix Makefiles", "Ninja"]
}

fn cmake_configure(env: &TestEnv, source: &Path, build: &Path, generator: &str) -> (bool, String) {
    let _ = std::fs::remove_dir_all(build);
    run(Command::new(crate::env::tool("cmake", "cmake"))
        .arg("-S")
        .arg(source)
        .arg("-B")
        .arg(build)
        .args(["-G", generator])
        .arg(format!("-DLRPYMRPC_EXECUTABLE={CLIENT}"))
        .arg("-DLRPYMRPC_SERVER_IP=127.0.0.1")
        .arg(format!("-DLRPYMRPC_SERVER_PORT={}", env.addr.port()))
        .arg(format!("-DLRPYMRPC_TLS_CONFIG_DIR={}", env.tls.display())))
}

fn cmake_build(build: &Path) -> (bool, String) {
    run(Command::new(crate::env::tool("cmake", "cmake")).arg("--build").arg(build))
}

#[test]
fn the_cmake_example_configures_builds_and_rebuilds_incrementally() {
    let env = TestEnv::new();
    let example = copy_examples(&env).join("cmake");
    for generator in cmake_generators() {
        let build = env.work.join(format!("build-{}", generator.replace(' ', "-")));
        let (ok, log) = cmake_configure(&env, &example, &build, generator);
        assert!(ok, "{generator}: {log}");
        let (ok, log) = cmake_build(&build);
        assert!(ok, "{generator}: {log}");
        let step = format!("[127.0.0.1:{} lib/CMAKE130.lib]:Upload", env.addr.port());
        assert!(log.contains(&step), "{generator}: the step's lines name it: {log}");
        let library = std::fs::read_to_string(build.join("lib/CMAKE130.lib")).unwrap();
        assert!(library.contains("cell (nor2)"), "{library}");

        let (ok, log) = cmake_build(&build);
        assert!(ok && !log.contains("]:Upload\n"), "{generator}: nothing to do the second time: {log}");

        touch(&example.join("cells/buf.sp"));
        let (ok, log) = cmake_build(&build);
        assert!(ok && log.matches("]:Upload\n").count() == 1, "{generator}: the step reran once: {log}");
        assert!(!log.contains("Building the cellchar wheel"), "{generator}: the wheel did not: {log}");
    }
}

#[test]
fn a_failing_remote_step_fails_the_cmake_build_without_an_output() {
    let env = TestEnv::new();
    let project = env.work.join("cmake-fails");
    copy_from_repo(&["integration"], &project);
    std::fs::create_dir_all(project.join("in")).unwrap();
    std::fs::write(project.join("in/data.txt"), "data\n").unwrap();
    std::fs::write(
        project.join("CMakeLists.txt"),
        r#"cmake_minimum_required(VERSION 3.20)
project(fails NONE)
list(APPEND CMAKE_MODULE_PATH "${CMAKE_CURRENT_SOURCE_DIR}/integration")
include(LrPymRPC)
lrpymrpc_add_command(OUTPUT out.txt SOURCES in COMMAND "echo half-written > out.txt; exit 3")
add_custom_target(everything ALL DEPENDS "${CMAKE_CURRENT_BINARY_DIR}/out.txt")
"#,
    )
    .unwrap();
    for generator in cmake_generators() {
        let build = env.work.join(format!("fails-{}", generator.replace(' ', "-")));
        let (ok, log) = cmake_configure(&env, &project, &build, generator);
        assert!(ok, "{log}");
        for _ in 0..2 {
            let (ok, log) = cmake_build(&build);
            assert!(!ok && log.contains("exit status 3"), "{generator}: {log}");
            assert!(!build.join("out.txt").exists(), "{generator}: no output after a failure");
        }
    }
}

// Running an example in place, as its README says, leaves what the build made there
// (`build*/` with links into the build tree, `lib/`): the tests copy only what the
// repository holds, whatever a user built beside it.
#[test]
fn what_a_user_built_in_the_examples_is_not_copied_into_the_tests() {
    struct Remove(PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let built = repo().join(format!("examples/cmake/build-by-a-user-{}", std::process::id()));
    let _remove = Remove(built.clone());
    std::fs::create_dir_all(&built).unwrap();
    std::os::unix::fs::symlink("/nonexistent/lrpymrpc/output", built.join("dangling")).unwrap();
    std::fs::write(built.join("CMakeCache.txt"), "# made by a user\n").unwrap();
    let env = TestEnv::bare();
    let examples = copy_examples(&env);
    assert!(examples.join("cmake/CMakeLists.txt").is_file(), "the example itself was copied");
    assert!(!examples.join("cmake").join(built.file_name().unwrap()).exists(), "the user's build was copied");
}

// What a step needs, per step, from Make (lrpymrpc_step's FLAGS) and CMake
// (lrpymrpc_add_command's FLAGS): under `make -j2` two steps holding the server's one
// `hspice` license run one after the other, the second saying why it waited; a CMake
// step asking for two cores sees two.
#[test]
fn make_and_cmake_steps_say_what_they_need_on_the_server() {
    let env = TestEnv::configured(|config| {
        config.capacity = lrpymrpc_mock_server::resources::Capacity {
            licenses: [("hspice".to_string(), 1)].into(),
            ..lrpymrpc_mock_server::resources::Capacity::of_machine()
        }
    });
    let project = env.work.join("needs");
    copy_from_repo(&["integration"], &project);
    let mut makefile = String::from("include integration/lrpymrpc.mk\n\nall: out1.txt out2.txt\n\n");
    for n in 1..=2 {
        std::fs::create_dir_all(project.join(format!("in{n}"))).unwrap();
        std::fs::write(project.join(format!("in{n}/data.txt")), format!("input {n}\n")).unwrap();
        makefile.push_str(&format!(
            "$(eval $(call lrpymrpc_step,out{n}.txt,in{n},sleep 1; cp in{n}/data.txt out{n}.txt,,--license hspice))\n"
        ));
    }
    std::fs::write(project.join("Makefile"), makefile).unwrap();
    let (ok, log) = make(&env, &project, &["-j2"]);
    assert!(ok, "{log}");
    assert!(log.contains("waiting: license hspice 1/1 in use"), "{log}");
    assert_eq!(std::fs::read_to_string(project.join("out2.txt")).unwrap(), "input 2\n");

    // Two cores, or all this machine has when it has fewer.
    let cores = lrpymrpc_mock_server::resources::machine::cpu_ids().len().min(2);
    let cmake_project = env.work.join("needs-cmake");
    copy_from_repo(&["integration"], &cmake_project);
    std::fs::create_dir_all(cmake_project.join("in")).unwrap();
    std::fs::write(cmake_project.join("in/data.txt"), "data\n").unwrap();
    std::fs::write(
        cmake_project.join("CMakeLists.txt"),
        r#"cmake_minimum_required(VERSION 3.20)
project(needs NONE)
list(APPEND CMAKE_MODULE_PATH "${CMAKE_CURRENT_SOURCE_DIR}/integration")
include(LrPymRPC)
lrpymrpc_add_command(OUTPUT out.txt SOURCES in FLAGS --cpus CORES
                     COMMAND "echo cores=`nproc` omp=$OMP_NUM_THREADS; cp in/data.txt out.txt")
add_custom_target(everything ALL DEPENDS "${CMAKE_CURRENT_BINARY_DIR}/out.txt")
"#
        .replace("CORES", &cores.to_string()),
    )
    .unwrap();
    let build = env.work.join("needs-cmake-build");
    let (ok, log) = cmake_configure(&env, &cmake_project, &build, "Unix Makefiles");
    assert!(ok, "{log}");
    let (ok, log) = cmake_build(&build);
    assert!(ok && log.contains(&format!("]:cores={cores} omp={cores}")), "{log}");
}
