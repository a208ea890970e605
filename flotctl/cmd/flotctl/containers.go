package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/console"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/flotilla/flotilla/flotctl/client"
	"github.com/flotilla/flotilla/flotctl/container"
	"github.com/flotilla/flotilla/flotctl/oci"
	"github.com/flotilla/flotilla/flotctl/output"
	"github.com/flotilla/flotilla/flotctl/stdio"
	"github.com/flotilla/flotilla/services/config"
)

// runFlags are `flotctl run`'s flags.
type runFlags struct {
	rm, detach, tty, interactive bool
	env, mounts                  []string
	memory                       string
	cpus                         float64
	snapshotter, name, platform  string
	user, workdir, logDir        string
}

// specOpts turns the flags into spec options; bad values are
// InvalidArgument errors naming the flag.
func (f *runFlags) specOpts() ([]oci.Opt, error) {
	var opts []oci.Opt
	if len(f.env) > 0 {
		opts = append(opts, oci.WithEnv(f.env))
	}
	if len(f.mounts) > 0 {
		var ms []specs.Mount
		for _, m := range f.mounts {
			mt, err := oci.ParseMount(m)
			if err != nil {
				return nil, err
			}
			ms = append(ms, mt)
		}
		opts = append(opts, oci.WithMounts(ms))
	}
	if f.memory != "" {
		n, err := oci.ParseMemory(f.memory)
		if err != nil {
			return nil, err
		}
		opts = append(opts, oci.WithMemoryLimit(n))
	}
	if f.cpus != 0 {
		opts = append(opts, oci.WithCPUs(f.cpus))
	}
	if f.user != "" {
		opts = append(opts, oci.WithUser(f.user))
	}
	if f.workdir != "" {
		if !filepath.IsAbs(f.workdir) {
			return nil, fmt.Errorf("--workdir %q must be an absolute path: %w", f.workdir, errdefs.ErrInvalidArgument)
		}
		wd := f.workdir
		opts = append(opts, func(s *specs.Spec) error { s.Process.Cwd = wd; return nil })
	}
	if f.detach && f.rm {
		return nil, fmt.Errorf("--rm and -d together: a detached container is removed with flotctl rm: %w", errdefs.ErrInvalidArgument)
	}
	if f.detach && (f.tty || f.interactive) {
		return nil, fmt.Errorf("-d cannot be combined with -t or -i: attach with flotctl exec -it: %w", errdefs.ErrInvalidArgument)
	}
	return opts, nil
}

func newRunCommand(g *globals) *cobra.Command {
	f := &runFlags{}
	cmd := &cobra.Command{
		Use:   "run [flags] IMAGE [COMMAND [ARG...]]",
		Short: "Run a command in a new container",
		Long: "Run creates a container from IMAGE (unpacking it into --snapshotter if needed), starts it and\n" +
			"waits for it, with its output on flotctl's; flotctl exits with the container's exit status.\n" +
			"With -d it prints the container's id and leaves it running, its output in a log (flotctl logs).",
		Args: cobra.MinimumNArgs(1),
	}
	fl := cmd.Flags()
	fl.SetInterspersed(false) // flags after IMAGE belong to the command
	fl.BoolVar(&f.rm, "rm", false, "remove the container when it exits")
	fl.BoolVarP(&f.detach, "detach", "d", false, "run in the background and print the container's id")
	fl.BoolVarP(&f.tty, "tty", "t", false, "give the container a terminal")
	fl.BoolVarP(&f.interactive, "interactive", "i", false, "keep the container's stdin connected to flotctl's")
	fl.StringArrayVarP(&f.env, "env", "e", nil, "set an environment variable: KEY=VALUE (repeatable)")
	fl.StringArrayVar(&f.mounts, "mount", nil, "bind mount: type=bind,src=HOST,dst=CONTAINER[,options=ro:rprivate] (repeatable)")
	fl.StringVarP(&f.memory, "memory", "m", "", "memory limit, e.g. 64m, 1g")
	fl.Float64Var(&f.cpus, "cpus", 0, "CPU limit in CPUs, e.g. 0.5")
	fl.StringVar(&f.snapshotter, "snapshotter", container.DefaultSnapshotter, "snapshotter for the container's rootfs")
	fl.StringVar(&f.name, "name", "", "the container's id (default: random)")
	fl.StringVar(&f.platform, "platform", "", "platform of the image's manifest to run (default: this host's)")
	fl.StringVarP(&f.user, "user", "u", "", "uid[:gid] to run as (default: the image's)")
	fl.StringVarP(&f.workdir, "workdir", "w", "", "working directory inside the container")
	fl.StringVar(&f.logDir, "log-dir", filepath.Join(config.DefaultState(), "flotctl", "logs"), "where detached containers' logs are written")

	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		opts, err := f.specOpts()
		if err != nil {
			return err
		}
		o := container.RunOptions{
			ID: f.name, Image: args[0], Args: args[1:], Snapshotter: f.snapshotter,
			SpecOpts: opts, TTY: f.tty, Detach: f.detach, Remove: f.rm, LogDir: f.logDir,
			FIFODir: fifoDir(),
		}
		if f.platform != "" {
			p, err := platforms.Parse(f.platform)
			if err != nil {
				return fmt.Errorf("--platform %q: %w", f.platform, errdefs.ErrInvalidArgument)
			}
			o.Platform = platforms.Only(p)
		}
		term, restore, err := setupTerminal(f.tty, &o.Streams, f.interactive, cmd)
		if err != nil {
			return err
		}
		defer restore()
		if term != nil {
			o.Console = term
		}
		var sigs chan os.Signal
		if !f.detach {
			sigs = notifySignals(term)
			defer signal.Stop(sigs)
		}
		return g.withClient(func(c *client.Client) error {
			ctx := cmd.Context()
			r, err := container.Run(ctx, c, o)
			if err != nil {
				return err
			}
			if f.detach {
				fmt.Fprintln(cmd.OutOrStdout(), r.ID)
				return nil
			}
			stop := forward(ctx, sigs, term, r.Resize, r.Signal)
			defer stop()
			code, err := r.Wait(ctx)
			if err != nil {
				return err
			}
			if code != 0 {
				return &exitError{code: int(code)}
			}
			return nil
		})
	}
	return cmd
}

// setupTerminal connects streams to flotctl's own: with tty, the current
// terminal set raw (restore undoes it); with interactive, stdin.
func setupTerminal(tty bool, s *stdio.Streams, interactive bool, cmd *cobra.Command) (console.Console, func(), error) {
	s.Stdout, s.Stderr = cmd.OutOrStdout(), cmd.ErrOrStderr()
	s.Terminal = tty
	if interactive {
		s.Stdin = cmd.InOrStdin()
	}
	if !tty {
		return nil, func() {}, nil
	}
	term, err := console.ConsoleFromFile(os.Stdin)
	if err != nil {
		return nil, nil, fmt.Errorf("-t needs flotctl's stdin to be a terminal: %w", errdefs.ErrInvalidArgument)
	}
	// The container's terminal does the line discipline; flotctl's passes
	// bytes through, as ctr's and nerdctl's do.
	if err := term.SetRaw(); err != nil {
		return nil, nil, fmt.Errorf("set terminal raw: %w", err)
	}
	return term, func() { term.Reset() }, nil
}

// notifySignals starts catching the signals forward passes on: SIGWINCH
// with a terminal, SIGINT and SIGTERM without. It is called before the task
// starts, so that a signal sent as soon as the container runs is not lost.
func notifySignals(term console.Console) chan os.Signal {
	ch := make(chan os.Signal, 4)
	if term != nil {
		signal.Notify(ch, unix.SIGWINCH)
	} else {
		signal.Notify(ch, unix.SIGINT, unix.SIGTERM)
	}
	return ch
}

// forward follows the terminal's size (SIGWINCH) with resize, when there
// is a terminal, and passes the signals caught on ch on to the task with
// sig otherwise. stop ends it.
func forward(ctx context.Context, ch chan os.Signal, term console.Console, resize func(context.Context, uint16, uint16) error, sig func(context.Context, uint32) error) (stop func()) {
	if term != nil {
		if sz, err := term.Size(); err == nil {
			resize(ctx, sz.Width, sz.Height)
		}
	}
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			case s := <-ch:
				if s == unix.SIGWINCH {
					if sz, err := term.Size(); err == nil {
						resize(ctx, sz.Width, sz.Height)
					}
					continue
				}
				if sig != nil {
					sig(ctx, uint32(s.(unix.Signal)))
				}
			}
		}
	}()
	return func() {
		signal.Stop(ch)
		close(done)
	}
}

// fifoDir is where stdio FIFOs are made: $XDG_RUNTIME_DIR when set, else
// the system's temporary directory.
func fifoDir() string {
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return d
	}
	return os.TempDir()
}

func newPsCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "ps [FILTER...]",
		Aliases: []string{"containers"},
		Short:   "List containers with their task's status (containerd filters, e.g. 'image~=busybox')",
	}
	format := addFormatFlag(cmd)
	quiet := cmd.Flags().BoolP("quiet", "q", false, "print only ids")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		f, err := output.ParseFormat(*format)
		if err != nil {
			return err
		}
		return g.withClient(func(c *client.Client) error {
			rows, err := container.List(cmd.Context(), c, args...)
			if err != nil {
				return err
			}
			if *quiet {
				for _, r := range rows {
					fmt.Fprintln(cmd.OutOrStdout(), r.ID)
				}
				return nil
			}
			now := time.Now()
			return output.Print(cmd.OutOrStdout(), f, rows, []output.Column[container.Summary]{
				{Header: "CONTAINER ID", Cell: func(r container.Summary) string { return r.ID }},
				{Header: "IMAGE", Cell: func(r container.Summary) string { return r.Image }},
				{Header: "COMMAND", Cell: func(r container.Summary) string { return quoteCommand(r.Command) }},
				{Header: "CREATED", Cell: func(r container.Summary) string { return output.Ago(r.Created, now) }},
				{Header: "STATUS", Cell: func(r container.Summary) string {
					if r.ExitStatus != nil {
						return fmt.Sprintf("%s (exit %d)", r.Status, *r.ExitStatus)
					}
					return r.Status
				}},
				{Header: "PID", Cell: func(r container.Summary) string {
					if r.Pid == 0 {
						return "-"
					}
					return strconv.FormatUint(uint64(r.Pid), 10)
				}},
			})
		})
	}
	return cmd
}

// quoteCommand prints a command line, cut at 30 characters.
func quoteCommand(args []string) string {
	s := strconv.Quote(strings.Join(args, " "))
	if len(s) > 30 {
		s = s[:28] + "…\""
	}
	return s
}

func newExecCommand(g *globals) *cobra.Command {
	var tty, interactive bool
	var env []string
	cmd := &cobra.Command{
		Use:   "exec [flags] CONTAINER COMMAND [ARG...]",
		Short: "Run a command in a running container",
		Args:  cobra.MinimumNArgs(2),
	}
	cmd.Flags().SetInterspersed(false)
	cmd.Flags().BoolVarP(&tty, "tty", "t", false, "give the command a terminal")
	cmd.Flags().BoolVarP(&interactive, "interactive", "i", false, "keep the command's stdin connected to flotctl's")
	cmd.Flags().StringArrayVarP(&env, "env", "e", nil, "set an environment variable: KEY=VALUE (repeatable)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		o := container.ExecOptions{Args: args[1:], Env: env, TTY: tty, FIFODir: fifoDir()}
		term, restore, err := setupTerminal(tty, &o.Streams, interactive, cmd)
		if err != nil {
			return err
		}
		defer restore()
		var stop func()
		if term != nil {
			o.Console = term
			sigs := notifySignals(term)
			defer signal.Stop(sigs)
			o.Resize = func(resize func(w, h uint16)) {
				stop = forward(cmd.Context(), sigs, term, func(_ context.Context, w, h uint16) error { resize(w, h); return nil }, nil)
			}
		}
		return g.withClient(func(c *client.Client) error {
			code, err := container.Exec(cmd.Context(), c, args[0], o)
			if stop != nil {
				stop()
			}
			if err != nil {
				return err
			}
			if code != 0 {
				return &exitError{code: int(code)}
			}
			return nil
		})
	}
	return cmd
}

func newLogsCommand(g *globals) *cobra.Command {
	var follow bool
	cmd := &cobra.Command{
		Use:   "logs [-f] CONTAINER",
		Short: "Print a detached container's output (flotctl run -d)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withClient(func(c *client.Client) error {
				ctx, stop := signal.NotifyContext(cmd.Context(), unix.SIGINT, unix.SIGTERM)
				defer stop()
				return container.Logs(ctx, c, args[0], cmd.OutOrStdout(), follow)
			})
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing until the container exits")
	return cmd
}

func newKillCommand(g *globals) *cobra.Command {
	var sig string
	var all bool
	cmd := &cobra.Command{
		Use:   "kill [--signal SIG] CONTAINER...",
		Short: "Send a signal to containers' tasks (default SIGKILL)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := parseSignal(sig)
			if err != nil {
				return err
			}
			return g.withClient(func(c *client.Client) error {
				var failed []error
				for _, id := range args {
					if err := container.Kill(cmd.Context(), c, id, s, all); err != nil {
						failed = append(failed, fmt.Errorf("kill %s: %w", id, err))
						continue
					}
					fmt.Fprintln(cmd.OutOrStdout(), id)
				}
				return joinErrors(failed)
			})
		},
	}
	cmd.Flags().StringVarP(&sig, "signal", "s", "SIGKILL", "signal name (SIGTERM, TERM) or number")
	cmd.Flags().BoolVarP(&all, "all", "a", false, "signal every process of the container, not only its init")
	return cmd
}

// parseSignal reads a signal as a name, with or without SIG, or a number.
func parseSignal(s string) (unix.Signal, error) {
	if n, err := strconv.Atoi(s); err == nil {
		if n <= 0 || n > 64 {
			return 0, fmt.Errorf("--signal %d: out of range: %w", n, errdefs.ErrInvalidArgument)
		}
		return unix.Signal(n), nil
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	sig := unix.SignalNum(name)
	if sig == 0 {
		return 0, fmt.Errorf("--signal %q: unknown signal: %w", s, errdefs.ErrInvalidArgument)
	}
	return sig, nil
}

func newRmCommand(g *globals) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "rm [-f] CONTAINER...",
		Short: "Remove containers with their tasks, snapshots and logs",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withClient(func(c *client.Client) error {
				var failed []error
				for _, id := range args {
					if err := container.Remove(cmd.Context(), c, id, force); err != nil {
						failed = append(failed, err)
						continue
					}
					fmt.Fprintln(cmd.OutOrStdout(), id)
				}
				return joinErrors(failed)
			})
		},
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "kill a running container first")
	return cmd
}
