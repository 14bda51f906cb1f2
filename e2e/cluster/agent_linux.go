package cluster

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/sluice-mesh/sluice/sockops/flow"
)

// DefaultConfigPoll is how often agents and control planes started here
// check the mesh file for edits, unless told otherwise: a fifth of the
// agent's default, so that an Update is in force within about half a second.
const DefaultConfigPoll = 200 * time.Millisecond

// AgentConfig says how to run a node's agent. Exactly one of Mesh and
// ControlPlane is set.
type AgentConfig struct {
	Binary string // required: the sluice binary
	// Mesh, for an agent in standalone mode: its embedded control plane
	// serves this file (--mesh), workloads section included.
	Mesh *MeshFile
	// ControlPlane, for an agent fed by a separate control plane (--xds).
	// The agent's workloads are those of the control plane's mesh file when
	// the agent starts, given as a workloads file (--workloads), which the
	// agent reads once: a later Update of the mesh file does not change
	// them. A control plane without a mesh file gives none: Args then say
	// where the workloads come from (--kubernetes).
	ControlPlane *ControlPlane
	ConfigPoll   time.Duration // optional: --config-poll; DefaultConfigPoll if zero
	Args         []string      // optional: more flags, after the others, so that they win
}

// Agent is a running `sluice agent` of a node. Its methods may be called
// from several goroutines.
type Agent struct {
	Node        *Node
	Socket      string // the local API's unix socket (sluice observe, sluice status)
	MetricsAddr string // host:port of /metrics, /healthz and /readyz
	bin         string
	d           *daemon
}

// StartAgent starts the node's agent: `sluice agent` attached to the
// node's cgroup with the node's pin directory, named after the node (xDS
// node id and node name), its local API on a socket in the cluster's
// directory and its metrics on a free port of 127.0.0.1. The cluster stops
// it at Close, before it removes the pins. Wait for it with Ready. A node
// runs one agent at a time: to restart it, Stop the running one first.
func (n *Node) StartAgent(cfg AgentConfig) (*Agent, error) {
	c := n.c
	if cfg.Binary == "" {
		return nil, fmt.Errorf("agent of node %s: no sluice binary given", n.Name)
	}
	if (cfg.Mesh == nil) == (cfg.ControlPlane == nil) {
		return nil, fmt.Errorf("agent of node %s: give exactly one of a mesh file and a control plane", n.Name)
	}
	c.mu.Lock()
	running := n.agent != nil && n.agent.d.exited() == nil
	c.mu.Unlock()
	if running {
		return nil, fmt.Errorf("node %s already has an agent running: stop it first", n.Name)
	}
	poll := cfg.ConfigPoll
	if poll == 0 {
		poll = DefaultConfigPoll
	}
	metrics, err := FreeAddr()
	if err != nil {
		return nil, fmt.Errorf("agent of node %s: %w", n.Name, err)
	}
	a := &Agent{Node: n, Socket: filepath.Join(c.Dir, n.Name+".sock"), MetricsAddr: metrics, bin: cfg.Binary}
	args := []string{"agent",
		"--cgroup", n.Cgroup, "--pin-dir", n.PinDir, "--node-id", n.Name, "--node-name", n.Name,
		"--socket", a.Socket, "--metrics-addr", a.MetricsAddr, "--config-poll", poll.String(),
	}
	if cfg.Mesh != nil {
		args = append(args, "--mesh", cfg.Mesh.Path)
	} else {
		args = append(args, "--xds", cfg.ControlPlane.Addr)
		if cfg.ControlPlane.Mesh != nil {
			file, err := c.writeWorkloads(n, cfg.ControlPlane.Mesh)
			if err != nil {
				return nil, fmt.Errorf("agent of node %s: %w", n.Name, err)
			}
			args = append(args, "--workloads", file)
		}
	}
	args = append(args, cfg.Args...)
	if a.d, err = c.startDaemon("agent "+n.Name, cfg.Binary, args...); err != nil {
		return nil, err
	}
	c.mu.Lock()
	n.agent = a
	c.mu.Unlock()
	return a, nil
}

// writeWorkloads writes the workloads f holds now to a workloads file
// (docs/identity.md) for node n's agent.
func (c *Cluster) writeWorkloads(n *Node, f *MeshFile) (string, error) {
	m, err := f.Mesh()
	if err != nil {
		return "", err
	}
	data, err := yaml.Marshal(struct {
		TrustDomain string     `yaml:"trustDomain,omitempty"`
		Workloads   []Workload `yaml:"workloads,omitempty"`
	}{m.TrustDomain, m.Workloads})
	if err != nil {
		return "", fmt.Errorf("render workloads file: %w", err)
	}
	path := filepath.Join(c.Dir, n.Name+"-workloads.yaml")
	return path, writeFileAtomic(path, data)
}

// Ready waits until the agent reports ready on /readyz (it has applied its
// first state from the control plane). It fails when ctx ends first or the
// agent exits, with the end of the agent's log.
func (a *Agent) Ready(ctx context.Context) error {
	for {
		if err := a.d.exited(); err != nil {
			return err
		}
		code, _, err := httpGet(ctx, "http://"+a.MetricsAddr+"/readyz")
		if err == nil && code == http.StatusOK {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("agent of node %s not ready (/readyz: %d, %v): %w; its log ends:\n%s",
				a.Node.Name, code, err, ctx.Err(), a.d.log.tail(40))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Observe runs `sluice observe -o json` with args against the agent and
// returns the flows it printed, in its order.
func (a *Agent) Observe(ctx context.Context, args ...string) ([]flow.Flow, error) {
	cmd := exec.CommandContext(ctx, a.bin, append([]string{"observe", "--socket", a.Socket, "-o", "json"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("sluice observe %s on node %s: %w: %s", strings.Join(args, " "), a.Node.Name, err, strings.TrimSpace(stderr.String()))
	}
	var flows []flow.Flow
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var f flow.Flow
		if err := json.Unmarshal(sc.Bytes(), &f); err != nil {
			return nil, fmt.Errorf("sluice observe on node %s printed %q: %w", a.Node.Name, sc.Text(), err)
		}
		flows = append(flows, f)
	}
	return flows, sc.Err()
}

// Metrics returns the agent's /metrics page (Prometheus text format).
func (a *Agent) Metrics(ctx context.Context) (string, error) {
	code, body, err := httpGet(ctx, "http://"+a.MetricsAddr+"/metrics")
	if err != nil {
		return "", fmt.Errorf("metrics of agent %s: %w", a.Node.Name, err)
	}
	if code != http.StatusOK {
		return "", fmt.Errorf("metrics of agent %s: HTTP %d: %s", a.Node.Name, code, body)
	}
	return body, nil
}

// Log returns what the agent has written to its standard output and error
// so far.
func (a *Agent) Log() string { return a.d.log.String() }

// Pid is the agent's process id.
func (a *Agent) Pid() int { return a.d.cmd.Process.Pid }

// Stop stops the agent (SIGTERM, then SIGKILL after 10 s) and returns its
// exit status; nil for a clean exit. The datapath stays in place, as it does
// when an agent stops on a real node.
func (a *Agent) Stop() error { return a.d.stop(daemonStopTimeout) }

// ControlPlane is a running `sluice controlplane` serving a mesh file over
// ADS to agents in --xds mode.
type ControlPlane struct {
	Addr string    // host:port it listens on, on 127.0.0.1
	Mesh *MeshFile // nil for a control plane serving something else (--kubernetes)
	d    *daemon
}

// StartControlPlane starts `sluice controlplane` serving f on a free port
// of 127.0.0.1, with args added, and waits until it accepts connections.
// With f nil, args say what it serves (--kubernetes).
// The cluster stops it at Close.
func (c *Cluster) StartControlPlane(ctx context.Context, bin string, f *MeshFile, args ...string) (*ControlPlane, error) {
	addr, err := FreeAddr()
	if err != nil {
		return nil, fmt.Errorf("control plane: %w", err)
	}
	cp := &ControlPlane{Addr: addr, Mesh: f}
	all := []string{"controlplane", "--listen", addr}
	if f != nil {
		all = append(all, "--mesh", f.Path, "--config-poll", DefaultConfigPoll.String())
	}
	all = append(all, args...)
	if cp.d, err = c.startDaemon("control plane", bin, all...); err != nil {
		return nil, err
	}
	var d net.Dialer
	for {
		if err := cp.d.exited(); err != nil {
			return nil, err
		}
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			conn.Close()
			return cp, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("control plane does not listen on %s: %w; its log ends:\n%s", addr, ctx.Err(), cp.d.log.tail(40))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Log returns what the control plane has written so far.
func (cp *ControlPlane) Log() string { return cp.d.log.String() }

// Stop stops the control plane and returns its exit status.
func (cp *ControlPlane) Stop() error { return cp.d.stop(daemonStopTimeout) }

func httpGet(ctx context.Context, url string) (int, string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}
