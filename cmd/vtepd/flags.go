package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// newFlagSet returns a flag set for a subcommand that reports errors to the
// caller instead of exiting.
func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("vtepd "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: vtepd %s [flags]\n\nFlags (each also from VTEPD_<FLAG>, e.g. VTEPD_ETCD_ENDPOINTS):\n", name)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args, then fills every flag not given on the command
// line from its VTEPD_* environment variable. Errors name the flag, or the
// variable and the flag.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || err != nil {
			return
		}
		name := envName(f.Name)
		v, ok := os.LookupEnv(name)
		if !ok {
			return
		}
		if e := fs.Set(f.Name, v); e != nil {
			if strings.Contains(f.Name, "password") {
				// Never echo a secret, not even inside the flag's own error.
				err = usageError{fmt.Errorf("environment %s: invalid value for --%s", name, f.Name)}
				return
			}
			err = usageError{fmt.Errorf("environment %s=%q: invalid value for --%s: %v", name, v, f.Name, e)}
		}
	})
	return err
}

func envName(flagName string) string {
	return "VTEPD_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// addrFlag is an optional IP address flag.
type addrFlag struct{ addr netip.Addr }

func (f *addrFlag) String() string {
	if !f.addr.IsValid() {
		return ""
	}
	return f.addr.String()
}

func (f *addrFlag) Set(s string) error {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return fmt.Errorf("%q is not an IP address", s)
	}
	if !a.Is4() {
		return fmt.Errorf("%s is not an IPv4 address", a)
	}
	f.addr = a
	return nil
}

// listFlag collects a flag given several times, or a comma-separated list.
type listFlag struct {
	values []string
	set    bool
}

func (f *listFlag) String() string { return strings.Join(f.values, ",") }

func (f *listFlag) Set(s string) error {
	if !f.set {
		f.values, f.set = nil, true // the first Set replaces the default
	}
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			f.values = append(f.values, v)
		}
	}
	return nil
}

// logFlags are the logging flags every long-running subcommand has.
type logFlags struct {
	level  zapcore.Level
	format string
}

func (l *logFlags) register(fs *flag.FlagSet) {
	l.level = zapcore.InfoLevel
	fs.Var(&l.level, "log-level", "log level: debug, info, warn or error (misses are logged one by one at debug)")
	fs.StringVar(&l.format, "log-format", "console", "log format: console or json")
}

// logger builds the process's logger. Sampling keeps a miss storm from
// turning into a log storm: per second, the first 100 lines with the same
// message are written, then every 100th.
func (l *logFlags) logger(stderr io.Writer) (*zap.Logger, error) {
	encCfg := zap.NewProductionEncoderConfig()
	encCfg.EncodeTime = zapcore.ISO8601TimeEncoder
	encCfg.EncodeDuration = zapcore.StringDurationEncoder
	var enc zapcore.Encoder
	switch l.format {
	case "console":
		encCfg.EncodeLevel = zapcore.CapitalLevelEncoder
		enc = zapcore.NewConsoleEncoder(encCfg)
	case "json":
		enc = zapcore.NewJSONEncoder(encCfg)
	default:
		return nil, usageError{fmt.Errorf("invalid value %q for --log-format: want console or json", l.format)}
	}
	core := zapcore.NewCore(enc, zapcore.Lock(zapcore.AddSync(stderr)), l.level)
	core = zapcore.NewSamplerWithOptions(core, 1e9, 100, 100)
	return zap.New(core), nil
}
