package netns

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Process is a program the lab started in a namespace.
type Process struct {
	Name    string
	LogPath string

	cmd  *exec.Cmd
	log  *os.File
	done chan struct{}

	mu  sync.Mutex
	err error

	logMu sync.Mutex
	read  logReader
}

func startProcess(name, logPath string, argv []string) (*Process, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("netns: log for %s: %w", name, err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	// A race-detector build waits a second at exit for late reports; 50 ms
	// is plenty for a process that has already stopped its goroutines, and
	// a lab of 50 hosts then stops in seconds, not a minute.
	cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=50")
	// If the test binary dies, its lab processes die with it instead of
	// running on in namespaces nobody will clean until the next run. The
	// kernel sends the signal when the thread that forked the process
	// ends, not the process: the lab lets no thread end but one stuck in
	// a lab namespace (see elsewhere, in kernel.go).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("netns: start %s: %w", strings.Join(argv, " "), err)
	}
	p := &Process{Name: name, LogPath: logPath, cmd: cmd, log: f, done: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		f.Close()
		close(p.done)
	}()
	return p, nil
}

// Pid is the process ID (`ip netns exec` execs the program, so this is the
// program's own).
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Exited reports whether the process has ended, and how.
func (p *Process) Exited() (bool, error) {
	select {
	case <-p.done:
		p.mu.Lock()
		defer p.mu.Unlock()
		return true, p.err
	default:
		return false, nil
	}
}

// Done is closed when the process has ended.
func (p *Process) Done() <-chan struct{} { return p.done }

// Signal sends sig to the process.
func (p *Process) Signal(sig os.Signal) error { return p.cmd.Process.Signal(sig) }

// Wait waits up to timeout for the process to end and returns its exit error.
func (p *Process) Wait(timeout time.Duration) error {
	select {
	case <-p.done:
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.err
	case <-time.After(timeout):
		return fmt.Errorf("netns: %s still running after %s", p.Name, timeout)
	}
}

// Stop sends SIGTERM, then SIGKILL if the process has not ended within
// grace. It returns the exit error of a process that stopped on SIGTERM.
func (p *Process) Stop(grace time.Duration) error {
	if done, err := p.Exited(); done {
		return err
	}
	p.Signal(syscall.SIGTERM)
	if err := p.Wait(grace); err == nil || !strings.Contains(err.Error(), "still running") {
		return err
	}
	p.Kill()
	return errors.New("netns: " + p.Name + " did not stop on SIGTERM; killed")
}

// Kill sends SIGKILL and waits for the process to end.
func (p *Process) Kill() {
	p.cmd.Process.Kill()
	<-p.done
}

// Log returns what the process has written so far.
func (p *Process) Log() string {
	p.logMu.Lock()
	defer p.logMu.Unlock()
	p.read.refresh(p.LogPath)
	return string(p.read.data)
}
