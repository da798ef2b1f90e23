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
}

// Build compiles vtepd and labetcd into dir. It finds the module from the
// working directory, so it works from the repository root and from a test's
// package directory.
func Build(dir string) (Binaries, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return Binaries{}, fmt.Errorf("netns: go env GOMOD: %w", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(out)))
	b := Binaries{Vtepd: filepath.Join(dir, "vtepd"), LabEtcd: filepath.Join(dir, "labetcd")}
	for _, t := range []struct{ out, pkg string }{
		{b.Vtepd, "./cmd/vtepd"},
		{b.LabEtcd, "./test/netns/cmd/labetcd"},
	} {
		cmd := exec.Command("go", "build", "-o", t.out, t.pkg)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			return Binaries{}, fmt.Errorf("netns: go build %s: %v: %s", t.pkg, err, bytes.TrimSpace(out))
		}
	}
	return b, nil
}
