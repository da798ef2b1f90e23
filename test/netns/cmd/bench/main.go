// Command bench is `make bench`: it measures vtepd against its targets in
// the netns lab and with Go benchmarks, and writes BENCHMARKS.md.
//
// Every scenario runs the real daemon (built without the race detector) in
// namespaces on this machine; nothing leaves them. A scenario that fails is
// reported as such in the table, and the others still run.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/vtepd/vtepd/test/netns"
)

// row is one line of the results table.
type row struct {
	Metric   string
	Target   string
	Measured string
	// Met is "yes", "no", or "" where there is no target (context only).
	Met     string
	Command string
}

// bench holds what every scenario needs.
type bench struct {
	bins netns.Binaries
	dir  string
	rows []row
	// notes are paragraphs printed under the table.
	notes []string
	// vtepdEnv is given to every vtepd of the lab's overlays (-vtepd-env).
	vtepdEnv []string
}

func (b *bench) add(r row) {
	b.rows = append(b.rows, r)
	fmt.Printf("  %-58s %-22s %s\n", r.Metric, r.Measured, r.Met)
}

func (b *bench) note(format string, args ...any) {
	b.notes = append(b.notes, fmt.Sprintf(format, args...))
}

func main() {
	out := flag.String("out", "BENCHMARKS.md", "where to write the report")
	only := flag.String("only", "", "comma-separated scenarios to run (default: all): "+strings.Join(scenarioNames(), ","))
	keep := flag.Bool("keep", false, "keep the binaries and every process's log (printed: where)")
	env := flag.String("vtepd-env", "", "comma-separated NAME=value pairs for every vtepd the lab starts, "+
		"to measure what the runtime's settings cost (GOGC=off,GOMAXPROCS=1); named in the report")
	flag.Parse()
	var vtepdEnv []string
	if *env != "" {
		vtepdEnv = strings.Split(*env, ",")
	}
	if err := run(*out, *only, *keep, vtepdEnv); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

type scenario struct {
	name string
	fn   func(*bench) error
}

func scenarios() []scenario {
	return []scenario{
		{"go", (*bench).goBenchmarks},
		{"firstpacket", (*bench).firstPacket},
		{"firstpacket6", (*bench).firstPacket6},
		{"join", (*bench).join},
		{"storm", (*bench).storm},
		{"storm6", (*bench).storm6},
		{"economy", (*bench).economy},
		{"scale", (*bench).scale},
		{"dataplane", (*bench).dataPlane},
		{"outage", (*bench).outage},
	}
}

func scenarioNames() []string {
	var out []string
	for _, s := range scenarios() {
		out = append(out, s.name)
	}
	return out
}

func run(out, only string, keep bool, vtepdEnv []string) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("the lab needs root (network namespaces): run `sudo make bench`")
	}
	if err := netns.RestoreNeighbourLimits(); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "vtepd-bench-")
	if err != nil {
		return err
	}
	if keep {
		fmt.Println("==> logs and binaries kept in", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	fmt.Println("==> building vtepd and the lab's tools (no race detector)")
	bins, err := netns.Build(dir, netns.BuildOptions{})
	if err != nil {
		return err
	}
	b := &bench{bins: bins, dir: dir, vtepdEnv: vtepdEnv}
	start := time.Now()
	want := map[string]bool{}
	for _, s := range strings.Split(only, ",") {
		if s != "" {
			want[s] = true
		}
	}
	for _, s := range scenarios() {
		if len(want) > 0 && !want[s.name] {
			continue
		}
		fmt.Printf("==> %s\n", s.name)
		t0 := time.Now()
		if err := s.fn(b); err != nil {
			fmt.Printf("  %s FAILED: %v\n", s.name, err)
			b.add(row{Metric: "scenario " + s.name, Measured: "failed: " + oneLine(err.Error()), Met: "no", Command: "make bench"})
		}
		fmt.Printf("  (%s took %v)\n", s.name, time.Since(t0).Round(time.Second))
	}
	if err := b.write(out, time.Since(start)); err != nil {
		return err
	}
	fmt.Printf("==> wrote %s (%v in all)\n", out, time.Since(start).Round(time.Second))
	return nil
}

// newLab makes a lab for one scenario; close it when done.
func (b *bench) newLab(name string) (*netns.Lab, error) {
	d, err := os.MkdirTemp(b.dir, name+"-")
	if err != nil {
		return nil, err
	}
	return netns.New(netns.Options{Name: name, Dir: d, Bin: b.bins})
}

func (b *bench) write(path string, took time.Duration) error {
	var w strings.Builder
	fmt.Fprintf(&w, "# vtepd benchmarks\n\n")
	fmt.Fprintf(&w, "Written by `make bench` (`go run ./test/netns/cmd/bench`) on %s, in %v.\n\n", time.Now().UTC().Format("2006-01-02 15:04 MST"), took.Round(time.Second))
	fmt.Fprintf(&w, "| machine | |\n|---|---|\n")
	for _, kv := range machine() {
		fmt.Fprintf(&w, "| %s | %s |\n", kv[0], kv[1])
	}
	fmt.Fprintf(&w, "\nEvery figure is from this run, on this machine: the lab's hosts are network\n")
	fmt.Fprintf(&w, "namespaces on one kernel, joined by veth pairs and a bridge, with vtepd built\n")
	fmt.Fprintf(&w, "without the race detector and logging at info level.\n\n")
	if len(b.vtepdEnv) > 0 {
		fmt.Fprintf(&w, "Every vtepd ran with `%s` (`-vtepd-env`).\n\n", strings.Join(b.vtepdEnv, " "))
	}
	fmt.Fprintf(&w, "| metric | target | measured | met | command |\n|---|---|---|---|---|\n")
	for _, r := range b.rows {
		fmt.Fprintf(&w, "| %s | %s | %s | %s | %s |\n", r.Metric, dash(r.Target), r.Measured, dash(r.Met), "`"+r.Command+"`")
	}
	if len(b.notes) > 0 {
		fmt.Fprintf(&w, "\n## Notes\n\n")
		for _, n := range b.notes {
			fmt.Fprintf(&w, "%s\n\n", n)
		}
	}
	return os.WriteFile(path, []byte(w.String()), 0o644)
}

func machine() [][2]string {
	cpu := "unknown"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				_, v, _ := strings.Cut(l, ":")
				cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	kernel, _ := exec.Command("uname", "-r").Output()
	mem := "unknown"
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		if f := strings.Fields(strings.Split(string(b), "\n")[0]); len(f) >= 2 {
			mem = f[1] + " kB"
		}
	}
	return [][2]string{
		{"CPU", fmt.Sprintf("%s, %d cores", cpu, runtime.NumCPU())},
		{"memory", mem},
		{"kernel", strings.TrimSpace(string(kernel))},
		{"Go", runtime.Version()},
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}

func met(ok bool) string {
	if ok {
		return "yes"
	}
	return "no"
}

// percentile returns the p-th percentile (0..100) of ds, nearest rank.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(float64(len(s))*p/100+0.5) - 1
	return s[max(0, min(i, len(s)-1))]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.3f ms", float64(d)/float64(time.Millisecond)) }
func us(d time.Duration) string { return fmt.Sprintf("%.1f µs", float64(d)/float64(time.Microsecond)) }
