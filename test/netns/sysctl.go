package netns

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// The kernel's ARP table is one table for all namespaces, bounded by
// gc_thresh1/2/3, which exist only in the root namespace; so is its IPv6
// neighbour table, with its own three. A test that needs more than 1024
// neighbour entries of a family must raise them there, and put them back.
var gcThresh = []string{"gc_thresh1", "gc_thresh2", "gc_thresh3"}

const gcThreshDir = "/proc/sys/net/ipv4/neigh/default"

// limitFiles are the files RaiseNeighbourLimits sets, IPv4's then IPv6's,
// each family's in the order gc_thresh1, 2, 3.
var limitFiles = func() []string {
	var out []string
	for _, dir := range []string{gcThreshDir, "/proc/sys/net/ipv6/neigh/default"} {
		for _, name := range gcThresh {
			out = append(out, filepath.Join(dir, name))
		}
	}
	return out
}()

// savedLimits is where the original values wait while raised, so that a run
// that crashes before restoring them is undone by the next one.
var savedLimits = "/run/vtepd-lab/gc_thresh.saved"

// RaiseNeighbourLimits sets the root namespace's gc_thresh1/2/3, of both
// families, and returns a function that restores the values found before.
func RaiseNeighbourLimits(thresh1, thresh2, thresh3 int) (restore func() error, err error) {
	if err := RestoreNeighbourLimits(); err != nil {
		return nil, err
	}
	var orig []string
	for _, f := range limitFiles {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("netns: read %s: %w", f, err)
		}
		orig = append(orig, strings.TrimSpace(string(b)))
	}
	if err := os.MkdirAll(filepath.Dir(savedLimits), 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(savedLimits, []byte(strings.Join(orig, " ")), 0o644); err != nil {
		return nil, err
	}
	for i, f := range limitFiles {
		v := []int{thresh1, thresh2, thresh3}[i%len(gcThresh)]
		if err := os.WriteFile(f, []byte(fmt.Sprint(v)), 0o644); err != nil {
			RestoreNeighbourLimits()
			return nil, fmt.Errorf("netns: set %s: %w", f, err)
		}
	}
	return RestoreNeighbourLimits, nil
}

// RestoreNeighbourLimits puts back gc_thresh values saved by
// RaiseNeighbourLimits, if any are waiting. A file of three values, from a
// run that raised IPv4's alone, restores those.
func RestoreNeighbourLimits() error {
	b, err := os.ReadFile(savedLimits)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	vals := strings.Fields(string(b))
	if len(vals) != len(limitFiles) && len(vals) != len(gcThresh) {
		return fmt.Errorf("netns: %s is damaged: %q", savedLimits, b)
	}
	// gc_thresh3 >= 2 >= 1 must hold at every step when lowering.
	for i := len(vals) - 1; i >= 0; i-- {
		if err := os.WriteFile(limitFiles[i], []byte(vals[i]), 0o644); err != nil {
			return fmt.Errorf("netns: restore %s=%s: %w", limitFiles[i], vals[i], err)
		}
	}
	return os.Remove(savedLimits)
}

// NeighbourLimits reads the root namespace's gc_thresh1/2/3.
func NeighbourLimits() ([3]string, error) {
	var out [3]string
	for i, name := range gcThresh {
		b, err := os.ReadFile(filepath.Join(gcThreshDir, name))
		if err != nil {
			return out, err
		}
		out[i] = strings.TrimSpace(string(b))
	}
	return out, nil
}
