package netns

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// The kernel's ARP table is one table for all namespaces, bounded by
// gc_thresh1/2/3, which exist only in the root namespace. A test that needs
// more than 1024 neighbour entries must raise them there, and put them back.
var gcThresh = []string{"gc_thresh1", "gc_thresh2", "gc_thresh3"}

const gcThreshDir = "/proc/sys/net/ipv4/neigh/default"

// savedLimits is where the original values wait while raised, so that a run
// that crashes before restoring them is undone by the next one.
var savedLimits = "/run/vtepd-lab/gc_thresh.saved"

// RaiseNeighbourLimits sets the root namespace's gc_thresh1/2/3 and returns
// a function that restores the values found before.
func RaiseNeighbourLimits(thresh1, thresh2, thresh3 int) (restore func() error, err error) {
	if err := RestoreNeighbourLimits(); err != nil {
		return nil, err
	}
	var orig []string
	for _, name := range gcThresh {
		b, err := os.ReadFile(filepath.Join(gcThreshDir, name))
		if err != nil {
			return nil, fmt.Errorf("netns: read %s: %w", name, err)
		}
		orig = append(orig, strings.TrimSpace(string(b)))
	}
	if err := os.MkdirAll(filepath.Dir(savedLimits), 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(savedLimits, []byte(strings.Join(orig, " ")), 0o644); err != nil {
		return nil, err
	}
	for i, v := range []int{thresh1, thresh2, thresh3} {
		if err := os.WriteFile(filepath.Join(gcThreshDir, gcThresh[i]), []byte(fmt.Sprint(v)), 0o644); err != nil {
			RestoreNeighbourLimits()
			return nil, fmt.Errorf("netns: set %s: %w", gcThresh[i], err)
		}
	}
	return RestoreNeighbourLimits, nil
}

// RestoreNeighbourLimits puts back gc_thresh values saved by
// RaiseNeighbourLimits, if any are waiting.
func RestoreNeighbourLimits() error {
	b, err := os.ReadFile(savedLimits)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	vals := strings.Fields(string(b))
	if len(vals) != len(gcThresh) {
		return fmt.Errorf("netns: %s is damaged: %q", savedLimits, b)
	}
	// gc_thresh3 >= 2 >= 1 must hold at every step when lowering.
	for i := len(gcThresh) - 1; i >= 0; i-- {
		if err := os.WriteFile(filepath.Join(gcThreshDir, gcThresh[i]), []byte(vals[i]), 0o644); err != nil {
			return fmt.Errorf("netns: restore %s=%s: %w", gcThresh[i], vals[i], err)
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
