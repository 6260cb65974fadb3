"""python -m cellchar -b CMD_FILE: characterize the cells the command file lists."""

import argparse
import os
import sys


def characterize(netlist_path):
    with open(netlist_path) as f:
        lines = [line.split() for line in f if line.strip() and not line.startswith("*")]
    transistors = [line for line in lines if line[0].upper().startswith("M")]
    delay_ps = 10 + 7 * len(transistors)
    return len(transistors), delay_ps


def main():
    parser = argparse.ArgumentParser(prog="cellchar")
    parser.add_argument("-b", "--batch", required=True, help="command file")
    args = parser.parse_args()
    settings = {}
    with open(args.batch) as f:
        for line in f:
            if "=" in line:
                key, value = line.split("=", 1)
                settings[key.strip()] = value.strip()
    library = settings["library"]
    cells_dir = settings["cells"]
    out_dir = settings["out"]
    os.makedirs(out_dir, exist_ok=True)
    cells = sorted(name[:-3] for name in os.listdir(cells_dir) if name.endswith(".sp"))
    lib_lines = [f"library ({library}) {{"]
    report = [f"# {library}", "", "| cell | transistors | delay (ps) |", "|---|---|---|"]
    for cell in cells:
        count, delay = characterize(os.path.join(cells_dir, cell + ".sp"))
        print(f"characterizing {cell}: {count} transistors, {delay} ps", flush=True)
        lib_lines.append(f"  cell ({cell}) {{ transistors : {count}; delay : {delay}; }}")
        report.append(f"| {cell} | {count} | {delay} |")
    lib_lines.append("}")
    with open(os.path.join(out_dir, f"{library}.lib"), "w") as f:
        f.write("\n".join(lib_lines) + "\n")
    with open(os.path.join(out_dir, f"{library}.md"), "w") as f:
        f.write("\n".join(report) + "\n")
    print(f"wrote {out_dir}/{library}.lib and {out_dir}/{library}.md", file=sys.stderr)


if __name__ == "__main__":
    main()
