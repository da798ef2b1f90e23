package netns

import (
	"bytes"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
)

// Binaries are the programs the lab runs.
type Binaries struct {
	Vtepd   string
	LabEtcd string
	// Burst sends a miss storm: one datagram to each of many addresses.
	Burst string
	// Seed writes many leases into etcd, for scale benchmarks.
	Seed string
	// MinResponder is the least a responder can do, the benchmarks' floor.
	MinResponder string
	// WhoAmI tells a TCP client the source address it was seen from.
	WhoAmI string
}

// BuildOptions say how to build the lab's binaries.
type BuildOptions struct {
	// Race builds vtepd with the race detector: the tests then catch data
	// races in the daemon under real traffic (see RaceReports).
	Race bool
}

// Build compiles vtepd and labetcd into dir. It finds the module from the
// working directory, so it works from the repository root and from a test's
// package directory.
func Build(dir string, opts BuildOptions) (Binaries, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return Binaries{}, fmt.Errorf("netns: go env GOMOD: %w", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(out)))
	b := Binaries{Vtepd: filepath.Join(dir, "vtepd"), LabEtcd: filepath.Join(dir, "labetcd"), Burst: filepath.Join(dir, "burst"), Seed: filepath.Join(dir, "seedleases"),
		MinResponder: filepath.Join(dir, "minresponder"), WhoAmI: filepath.Join(dir, "whoami")}
	var race []string
	if opts.Race {
		race = []string{"-race"}
	}
	for _, t := range []struct {
		out, pkg string
		flags    []string
	}{
		{b.Vtepd, "./cmd/vtepd", race},
		{b.LabEtcd, "./test/netns/cmd/labetcd", nil},
		{b.Burst, "./test/netns/cmd/burst", nil},
		{b.Seed, "./test/netns/cmd/seedleases", nil},
		{b.MinResponder, "./test/netns/cmd/minresponder", nil},
		{b.WhoAmI, "./test/netns/cmd/whoami", nil},
	} {
		args := append(append([]string{"build"}, t.flags...), "-o", t.out, t.pkg)
		cmd := exec.Command("go", args...)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			return Binaries{}, fmt.Errorf("netns: go build %s: %v: %s", t.pkg, err, bytes.TrimSpace(out))
		}
	}
	return b, nil
}
