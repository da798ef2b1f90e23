package netns

import (
	"bytes"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
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

// Build compiles vtepd and the lab's own programs into dir. It finds the
// module from the working directory, so it works from the repository root
// and from a test's package directory. Two go commands run at once: one
// for the lab's programs (one command, so the go command builds them in
// parallel and links them once each), one for vtepd, which alone may be
// built with the race detector.
func Build(dir string, opts BuildOptions) (Binaries, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return Binaries{}, fmt.Errorf("netns: go env GOMOD: %w", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(out)))
	b := Binaries{Vtepd: filepath.Join(dir, "vtepd"), LabEtcd: filepath.Join(dir, "labetcd"), Burst: filepath.Join(dir, "burst"), Seed: filepath.Join(dir, "seedleases"),
		MinResponder: filepath.Join(dir, "minresponder"), WhoAmI: filepath.Join(dir, "whoami")}
	vtepd := []string{"build", "-o", b.Vtepd}
	if opts.Race {
		vtepd = append(vtepd, "-race")
	}
	vtepd = append(vtepd, "./cmd/vtepd")
	// With -o naming a directory, each main package's binary is named
	// after the package's directory: the names in Binaries.
	tools := []string{"build", "-o", dir + string(filepath.Separator),
		"./test/netns/cmd/labetcd", "./test/netns/cmd/burst", "./test/netns/cmd/seedleases",
		"./test/netns/cmd/minresponder", "./test/netns/cmd/whoami"}
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, args := range [][]string{vtepd, tools} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := exec.Command("go", args...)
			cmd.Dir = root
			if out, err := cmd.CombinedOutput(); err != nil {
				errs[i] = fmt.Errorf("netns: go %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return Binaries{}, err
	}
	return b, nil
}
