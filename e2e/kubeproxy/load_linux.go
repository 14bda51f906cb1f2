package kubeproxy

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/netip"
	"os/exec"
	"strings"
	"time"
)

// maxStderr is how much of a tool's error output an error carries: nft
// quotes the offending line, which for a generated script can be long.
const maxStderr = 2000

// Load installs svcs in the network namespace netns (a name under
// /run/netns), replacing what an earlier Load of the same mode put there:
// with iptables-restore (whichever backend the system's alternative
// selects; Backend says which) for IPTables, or `nft -f -` for NFTables.
// The rules are streamed to the tool's standard input as they are
// generated. It returns how long the tool ran, from start to exit, which
// includes generation since the two overlap. Invalid services are
// rejected before the tool starts.
func Load(ctx context.Context, netns string, mode Mode, svcs []Service, podCIDR netip.Prefix) (time.Duration, error) {
	var write func(io.Writer, []Service, netip.Prefix) error
	switch mode {
	case IPTables:
		write = writeIPTables
	case NFTables:
		write = writeNFTables
	default:
		return 0, fmt.Errorf("load into netns %s: unknown mode %q: want %q or %q", netns, mode, IPTables, NFTables)
	}
	// Validated once, here, so that a bad service never starts the tool.
	if err := validate(svcs, podCIDR); err != nil {
		return 0, fmt.Errorf("load %s rules into netns %s: %w", mode, netns, err)
	}
	took, err := runTool(ctx, netns, mode, func(w io.Writer) error { return write(w, svcs, podCIDR) })
	if err != nil {
		return 0, fmt.Errorf("load %d services as %s rules into netns %s: %w", len(svcs), mode, netns, err)
	}
	return took, nil
}

// Flush removes what Load installed in netns for mode: it empties the nat
// and filter tables (iptables), or deletes table ip kube-proxy (nftables).
// Flushing where nothing was loaded is not an error.
func Flush(ctx context.Context, netns string, mode Mode) error {
	var script string
	switch mode {
	case IPTables:
		script = "*nat\nCOMMIT\n*filter\nCOMMIT\n"
	case NFTables:
		script = nftReset
	default:
		return fmt.Errorf("flush netns %s: unknown mode %q: want %q or %q", netns, mode, IPTables, NFTables)
	}
	_, err := runTool(ctx, netns, mode, func(w io.Writer) error {
		_, err := io.WriteString(w, script)
		return err
	})
	if err != nil {
		return fmt.Errorf("flush %s rules in netns %s: %w", mode, netns, err)
	}
	return nil
}

// Backend describes the tool mode uses, in its own words, for instance
// "iptables-restore v1.8.9 (nf_tables)" or "nftables v1.0.6 (Lester
// Gooch #5)".
func Backend(ctx context.Context, mode Mode) (string, error) {
	var cmd *exec.Cmd
	switch mode {
	case IPTables:
		cmd = exec.CommandContext(ctx, "iptables-restore", "--version")
	case NFTables:
		cmd = exec.CommandContext(ctx, "nft", "--version")
	default:
		return "", fmt.Errorf("backend: unknown mode %q: want %q or %q", mode, IPTables, NFTables)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s: %w: %s", strings.Join(cmd.Args, " "), err, cut(stderr.Bytes()))
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	if line == "" {
		return "", fmt.Errorf("%s printed nothing", strings.Join(cmd.Args, " "))
	}
	return line, nil
}

// runTool runs mode's loading tool in netns with what write produces on its
// standard input, and returns how long the tool ran.
func runTool(ctx context.Context, netns string, mode Mode, write func(io.Writer) error) (time.Duration, error) {
	args := []string{"netns", "exec", netns}
	if mode == IPTables {
		// -w: the legacy backend shares a lock across namespaces.
		args = append(args, "iptables-restore", "-w")
	} else {
		args = append(args, "nft", "-f", "-")
	}
	cmd := exec.CommandContext(ctx, "ip", args...)
	stderr := &capped{max: maxStderr}
	cmd.Stdout, cmd.Stderr = stderr, stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return 0, err
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start %s: %w", strings.Join(cmd.Args, " "), err)
	}
	wrote := make(chan error, 1)
	go func() {
		bw := bufio.NewWriterSize(stdin, 256<<10)
		err := write(bw)
		if err == nil {
			err = bw.Flush()
		}
		if cerr := stdin.Close(); err == nil {
			err = cerr
		}
		wrote <- err
	}()
	waitErr := cmd.Wait()
	took := time.Since(start)
	writeErr := <-wrote
	switch {
	case waitErr != nil:
		// A write error then is only the tool having gone away.
		return 0, fmt.Errorf("%s: %w: %s", strings.Join(cmd.Args[4:], " "), waitErr, stderr)
	case writeErr != nil:
		return 0, fmt.Errorf("write rules to %s: %w", strings.Join(cmd.Args[4:], " "), writeErr)
	}
	return took, nil
}

// capped keeps the first max bytes written to it and counts the rest.
type capped struct {
	max     int
	buf     bytes.Buffer
	dropped int
}

func (c *capped) Write(p []byte) (int, error) {
	keep := min(len(p), c.max-c.buf.Len())
	c.buf.Write(p[:keep])
	c.dropped += len(p) - keep
	return len(p), nil
}

func (c *capped) String() string {
	s := strings.TrimSpace(c.buf.String())
	if c.dropped > 0 {
		s += fmt.Sprintf(" ... (%d more bytes)", c.dropped)
	}
	if s == "" {
		return "(no output)"
	}
	return s
}

func cut(b []byte) string {
	c := &capped{max: maxStderr}
	c.Write(b)
	return c.String()
}
