package demo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/sluice-mesh/sluice/e2e/cluster"
	"github.com/sluice-mesh/sluice/sockops/flow"
)

// node is a node of the cluster and the agent that runs it.
type node struct {
	*cluster.Node
	socket  string // the agent's local API (sluice observe)
	metrics string // host:port of the agent's /metrics
	logPath string
	cmd     *exec.Cmd
	done    chan error // the agent's exit; nil once stopped
}

// startAgent starts `sluice agent` for n, fed from the demo's copy of the
// mesh file by its embedded control plane.
func (d *demo) startAgent(n *cluster.Node) (*node, error) {
	port, err := cluster.FreeAddr()
	if err != nil {
		return nil, err
	}
	a := &node{
		Node:    n,
		socket:  filepath.Join(d.dir, n.Name+".sock"),
		metrics: port,
		logPath: filepath.Join(d.dir, n.Name+".log"),
	}
	logFile, err := os.Create(a.logPath)
	if err != nil {
		return nil, err
	}
	a.cmd = exec.Command(d.opts.Self, "agent", "--mesh", d.mesh.path,
		"--cgroup", n.Cgroup, "--pin-dir", n.PinDir,
		"--node-id", n.Name, "--node-name", n.Name, "--config-poll", "100ms",
		"--socket", a.socket, "--metrics-addr", a.metrics)
	a.cmd.Stdout, a.cmd.Stderr = logFile, logFile
	// Its own process group: a Ctrl-C at the terminal reaches the demo,
	// which stops the agents itself before removing the cluster.
	a.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := a.cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start the agent of %s: %w", n.Name, err)
	}
	a.done = make(chan error, 1)
	go func() {
		a.done <- a.cmd.Wait()
		logFile.Close()
	}()
	return a, nil
}

// ready reports whether the agent serves /readyz with 200.
func (a *node) ready() bool {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+a.metrics+"/readyz", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// get returns the body of path on the agent's metrics address.
func (a *node) get(ctx context.Context, path string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+a.metrics+path, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("agent of %s: %w", a.Name, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("agent of %s: GET %s: %s", a.Name, path, resp.Status)
	}
	return string(body), err
}

// stop ends the agent with SIGTERM (SIGKILL after 10 s) and reports how
// it exited. It does nothing if the agent is stopped already.
func (a *node) stop() error {
	if a.done == nil {
		return nil
	}
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	var err error
	select {
	case err = <-a.done:
	case <-time.After(10 * time.Second):
		_ = a.cmd.Process.Kill()
		<-a.done
		err = errors.New("it did not exit within 10s of SIGTERM")
	}
	a.done = nil
	if err != nil {
		return fmt.Errorf("the agent of %s: %w", a.Name, err)
	}
	return nil
}

// observer is a `sluice observe --follow` process and what it printed.
type observer struct {
	n     *node
	since string // RFC 3339: the flows it shows are from then on
	cmd   *exec.Cmd
	out   cluster.LogBuffer
	done  chan error
	// The allowed client's connections it must show closed.
	expect []netip.AddrPort
}

// startObserver runs `sluice observe -f -o table` against n's agent,
// from now on.
func (d *demo) startObserver(n *node) (*observer, error) {
	o := &observer{n: n, since: time.Now().Format(time.RFC3339Nano), done: make(chan error, 1)}
	o.cmd = exec.Command(d.opts.Self, "observe", "--socket", n.socket, "-f", "--since", o.since, "-o", "table")
	o.cmd.Stdout, o.cmd.Stderr = &o.out, &o.out
	o.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := o.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start sluice observe: %w", err)
	}
	go func() { o.done <- o.cmd.Wait() }()
	return o, nil
}

// collect waits until the agent holds the records of step 4 (a deny of
// the denied client, and the close of each connection in o.expect) and the observer has printed every record the agent holds
// since it started, then stops it and returns its lines, and whether
// the destination of a connection reported it too.
func (o *observer) collect(ctx context.Context, d *demo) (lines []string, sameNode bool, err error) {
	var flows []flow.Flow
	var qerr error
	err = d.until(ctx, 15*time.Second, func() bool {
		if flows, qerr = d.observeJSON(ctx, o.n, "--since", o.since); qerr != nil {
			return true
		}
		denied, closed := 0, 0
		for _, f := range flows {
			switch {
			case f.Event == flow.EventDeny && f.Source.Workload == deniedClient && f.Verdict == flow.VerdictDenied &&
				f.Service != nil && f.Service.Name == webName:
				denied++
			case f.Event == flow.EventClose && f.Reporter == flow.ReporterSource && f.Source.Workload == allowedClient &&
				slices.Contains(o.expect, f.Source.Address):
				closed++
			}
		}
		lines = strings.Split(strings.TrimRight(o.out.String(), "\n"), "\n")
		return denied == 1 && closed == len(o.expect) && len(lines) == len(flows)+1 // and the header
	})
	if qerr != nil {
		return nil, false, qerr
	}
	if err != nil {
		return nil, false, fmt.Errorf("sluice observe: want a deny of %s and the closes of %s's connections from %v, printed as they came; the agent holds %d records, observe printed:\n%s: %w",
			deniedClient, allowedClient, o.expect, len(flows), o.out.String(), err)
	}
	if err := o.stop(); err != nil {
		return nil, false, err
	}
	for _, f := range flows {
		sameNode = sameNode || f.Reporter == flow.ReporterDestination
	}
	return lines, sameNode, nil
}

// stop interrupts the observer as Ctrl-C would; it must exit cleanly.
func (o *observer) stop() error {
	if o.done == nil {
		return nil
	}
	_ = o.cmd.Process.Signal(os.Interrupt)
	var err error
	select {
	case err = <-o.done:
	case <-time.After(5 * time.Second):
		_ = o.cmd.Process.Kill()
		<-o.done
		err = errors.New("it did not exit within 5s of SIGINT")
	}
	o.done = nil
	if err != nil {
		return fmt.Errorf("sluice observe -f: %w: %s", err, o.out.String())
	}
	return nil
}

// observeJSON runs `sluice observe -o json` against n's agent with args
// and decodes the records.
func (d *demo) observeJSON(ctx context.Context, n *node, args ...string) ([]flow.Flow, error) {
	cmd := exec.CommandContext(ctx, d.opts.Self, append([]string{"observe", "--socket", n.socket, "-o", "json"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("sluice observe: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	var flows []flow.Flow
	for dec := json.NewDecoder(bytes.NewReader(out)); dec.More(); {
		var f flow.Flow
		if err := dec.Decode(&f); err != nil {
			return nil, fmt.Errorf("sluice observe -o json: record %d: %w", len(flows)+1, err)
		}
		flows = append(flows, f)
	}
	return flows, nil
}
