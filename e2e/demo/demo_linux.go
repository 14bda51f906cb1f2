package demo

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/sluice-mesh/sluice/e2e/cluster"
)

// Options configures Run.
type Options struct {
	Out      io.Writer // required: where the demo reports
	Self     string    // required: path of the sluice binary (agent and backends)
	Mesh     string    // required: the mesh file the demo starts from (examples/mesh.yaml)
	Requests int       // optional: requests per phase, default 40
}

const (
	vip     = "10.96.0.10"
	vipPort = 80
	dnsVIP  = "10.96.0.53"
	bePort  = 8080
)

var backendNames = []string{"backend-a", "backend-b", "backend-c"}

// demo is one run's world.
type demo struct {
	opts     Options
	out      io.Writer
	client   *cluster.Pod
	node     *cluster.Node
	mesh     *meshFile
	agent    *exec.Cmd
	agentErr chan error
}

// Run builds a one-node simulated cluster (a client pod and three backend
// pods), starts `sluice agent` with its embedded control plane fed from a
// copy of opts.Mesh, and shows with curl how the kernel routes a service
// VIP — and how live edits of the mesh file shift traffic. It checks every
// step and returns an error if anything misbehaves. Everything it creates
// is removed before it returns.
func Run(ctx context.Context, opts Options) (err error) {
	if opts.Requests == 0 {
		opts.Requests = 40
	}
	for _, tool := range []string{"curl", "bash"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("the demo needs %s: apt-get install %s", tool, tool)
		}
	}
	d := &demo{opts: opts, out: opts.Out}
	dir, err := os.MkdirTemp("", "sluice-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if d.mesh, err = loadMeshFile(opts.Mesh, filepath.Join(dir, "mesh.yaml")); err != nil {
		return fmt.Errorf("mesh file: %w (run the demo from the repository root, or pass --mesh)", err)
	}

	c, err := cluster.New()
	if err != nil {
		return fmt.Errorf("create simulated cluster: %w", err)
	}
	defer func() {
		d.stopAgent()
		if cerr := c.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("clean up: %w", cerr))
		} else {
			fmt.Fprintln(d.out, "\nCleaned up: agent stopped, dataplane removed, pods, bridge and cgroups deleted.")
		}
	}()
	if err := d.buildCluster(ctx, c); err != nil {
		return err
	}
	if err := d.startAgent(ctx, dir); err != nil {
		return err
	}
	for _, step := range []func(context.Context) error{
		d.weighted, d.udp, d.shiftTraffic, d.noUsableEndpoint, d.removeService, d.agentGone,
	} {
		if err := step(ctx); err != nil {
			return err
		}
	}
	return nil
}

func (d *demo) buildCluster(ctx context.Context, c *cluster.Cluster) error {
	var err error
	if d.node, err = c.AddNode("node-1"); err != nil {
		return err
	}
	if d.client, err = d.node.AddPod("client", netip.MustParseAddr("10.244.0.2")); err != nil {
		return err
	}
	fmt.Fprintf(d.out, "Sluice demo: service routing in the kernel, configured over xDS\n\n")
	fmt.Fprintf(d.out, "Simulated cluster %s, node-1 = cgroup %s\n", c.ID, d.node.Cgroup)
	fmt.Fprintf(d.out, "  pod %-10s %s (runs curl and bash)\n", d.client.Name, d.client.IP)
	for i, name := range backendNames {
		ip := netip.AddrFrom4([4]byte{10, 244, 0, byte(11 + i)})
		pod, err := d.node.AddPod(name, ip)
		if err != nil {
			return err
		}
		args := []string{"demo-backend", "--name", name, "--listen", fmt.Sprintf("%s:%d", ip, bePort)}
		what := "HTTP"
		if i == 0 {
			args = append(args, "--udp-listen", ip.String()+":5353")
			what = "HTTP, UDP :5353"
		}
		if err := startBackend(pod, pod.Command(ctx, d.opts.Self, args...)); err != nil {
			return err
		}
		fmt.Fprintf(d.out, "  pod %-10s %s:%d (%s)\n", name, ip, bePort, what)
	}
	return nil
}

// startAgent runs `sluice agent` for node-1 with the embedded control plane.
func (d *demo) startAgent(ctx context.Context, dir string) error {
	logPath := filepath.Join(dir, "agent.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return err
	}
	d.agent = exec.Command(d.opts.Self, "agent", "--mesh", d.mesh.path,
		"--cgroup", d.node.Cgroup, "--pin-dir", d.node.PinDir,
		"--node-id", "node-1", "--node-name", "node-1", "--config-poll", "100ms",
		"--socket", filepath.Join(dir, "agent.sock"), "--metrics-addr", "")
	d.agent.Stdout, d.agent.Stderr = logFile, logFile
	d.agent.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	start := time.Now()
	if err := d.agent.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("start agent: %w", err)
	}
	d.agentErr = make(chan error, 1)
	go func() {
		d.agentErr <- d.agent.Wait()
		logFile.Close()
	}()
	fmt.Fprintf(d.out, "\nStarted: sluice agent --mesh mesh.yaml (embedded xDS control plane, Delta ADS)\n")
	fmt.Fprintf(d.out, "  mesh.yaml is a copy of %s; the demo edits it while the agent runs\n", d.opts.Mesh)
	err = d.until(ctx, 20*time.Second, func() (bool, error) {
		name, _ := d.curlOnce(ctx)
		return name != "", nil
	})
	if err != nil {
		log, _ := os.ReadFile(logPath)
		return fmt.Errorf("the agent did not start routing: %w\nagent log:\n%s", err, log)
	}
	fmt.Fprintf(d.out, "  routing in force %s after start\n", time.Since(start).Round(10*time.Millisecond))
	return nil
}

func (d *demo) stopAgent() {
	if d.agent == nil || d.agent.Process == nil || d.agentErr == nil {
		return
	}
	_ = d.agent.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.agentErr:
	case <-time.After(10 * time.Second):
		_ = d.agent.Process.Kill()
		<-d.agentErr
	}
	d.agentErr = nil
}

// 1. Weighted choice among healthy endpoints, as the example describes.
func (d *demo) weighted(ctx context.Context) error {
	fmt.Fprintf(d.out, "\n1) demo/web %s:%d -> backend-a (weight 1), backend-b (weight 3), backend-c (unhealthy)\n", vip, vipPort)
	counts, err := d.requests(ctx)
	if err != nil {
		return err
	}
	if counts["backend-c"] != 0 || counts["backend-a"] == 0 || counts["backend-b"] == 0 {
		return fmt.Errorf("step 1: unexpected distribution %v (backend-c is unhealthy; a and b should both answer)", counts)
	}
	return nil
}

// udp sends a datagram to the UDP service with bash's /dev/udp.
func (d *demo) udp(ctx context.Context) error {
	out, err := d.client.Output(d.client.Command(ctx, "bash", "-c",
		fmt.Sprintf("exec 3<>/dev/udp/%s/53 && echo q >&3 && timeout 3 head -n1 <&3", dnsVIP)))
	if err != nil || strings.TrimSpace(string(out)) != "backend-a" {
		return fmt.Errorf("UDP to demo/dns %s:53: answer %q, err %v; want backend-a", dnsVIP, out, err)
	}
	fmt.Fprintf(d.out, "   UDP: a datagram to demo/dns %s:53 (bash /dev/udp) was answered by backend-a\n", dnsVIP)
	return nil
}

// 2. A live edit shifts traffic: backend-b drains, backend-c recovers.
func (d *demo) shiftTraffic(ctx context.Context) error {
	if err := d.edit(2, "backend-b -> health: draining; backend-c -> health: healthy, weight: 2", func(m *meshFile) error {
		return errors.Join(
			m.setEndpoint("web", "10.244.0.12", map[string]string{"health": "draining"}),
			m.setEndpoint("web", "10.244.0.13", map[string]string{"health": "healthy", "weight": "2"}))
	}, func(name string, _ error) bool { return name == "backend-c" }); err != nil {
		return err
	}
	counts, err := d.requests(ctx)
	if err != nil {
		return err
	}
	if counts["backend-b"] != 0 || counts["backend-a"] == 0 || counts["backend-c"] == 0 {
		return fmt.Errorf("step 2: unexpected distribution %v (b is draining; a and c should answer)", counts)
	}
	return nil
}

// 3. No usable endpoint: connect() fails at once, no packet sent.
func (d *demo) noUsableEndpoint(ctx context.Context) error {
	var refusal string
	if err := d.edit(3, "backend-a and backend-c -> health: unhealthy", func(m *meshFile) error {
		return errors.Join(
			m.setEndpoint("web", "10.244.0.11", map[string]string{"health": "unhealthy"}),
			m.setEndpoint("web", "10.244.0.13", map[string]string{"health": "unhealthy"}))
	}, func(_ string, err error) bool {
		refusal = d.connectError(ctx)
		return strings.Contains(refusal, "Connection refused")
	}); err != nil {
		return err
	}
	fmt.Fprintf(d.out, "   bash: connect to %s:%d -> %q, from the kernel, with no packet sent\n", vip, vipPort, refusal)
	return nil
}

// 4. The service is removed: its VIP is not routed any more.
func (d *demo) removeService(ctx context.Context) error {
	var failure string
	if err := d.edit(4, "service web removed", func(m *meshFile) error {
		return m.removeService("web")
	}, func(string, error) bool {
		failure = d.connectError(ctx)
		return strings.Contains(failure, "unreachable")
	}); err != nil {
		return err
	}
	fmt.Fprintf(d.out, "   bash: connect to %s:%d -> %q (the VIP is just an address again; the pod has no route to it)\n", vip, vipPort, failure)
	return nil
}

// 5. The agent stops: the datapath stays and keeps routing; uninstall
// removes it.
func (d *demo) agentGone(ctx context.Context) error {
	if err := d.edit(5, "the original mesh.yaml restored", func(m *meshFile) error {
		src, err := loadMeshFile(d.opts.Mesh, m.path+".orig")
		if err != nil {
			return err
		}
		defer os.Remove(src.path)
		m.doc = src.doc
		return nil
	}, func(name string, _ error) bool { return name != "" }); err != nil {
		return err
	}
	d.stopAgent()
	fmt.Fprintf(d.out, "   sluice agent stopped (SIGTERM); its programs and maps stay pinned in %s\n", d.node.PinDir)
	counts, err := d.requests(ctx)
	if err != nil {
		return fmt.Errorf("routing stopped with the agent: %w", err)
	}
	if counts["backend-a"]+counts["backend-b"] != d.opts.Requests {
		return fmt.Errorf("step 5: unexpected distribution %v", counts)
	}
	fmt.Fprintln(d.out, "   routing continued with no agent running")
	out, err := exec.CommandContext(ctx, d.opts.Self, "uninstall", "--pin-dir", d.node.PinDir).CombinedOutput()
	if err != nil {
		return fmt.Errorf("sluice uninstall: %v: %s", err, out)
	}
	if name, _ := d.curlOnce(ctx); name != "" {
		return fmt.Errorf("the VIP still answered (%s) after sluice uninstall", name)
	}
	fmt.Fprintf(d.out, "   sluice uninstall: programs detached, pins removed; %s is no longer routed\n", vip)
	return nil
}

// edit changes the mesh file, then waits until check sees the change in the
// traffic, and reports how long the agent took.
func (d *demo) edit(step int, what string, change func(*meshFile) error, check func(answer string, err error) bool) error {
	if err := change(d.mesh); err != nil {
		return fmt.Errorf("edit mesh file: %w", err)
	}
	if err := d.mesh.save(); err != nil {
		return err
	}
	start := time.Now()
	fmt.Fprintf(d.out, "\n%d) live edit of mesh.yaml: %s\n", step, what)
	ctx := context.Background()
	err := d.until(ctx, 15*time.Second, func() (bool, error) {
		name, err := d.curlOnce(ctx)
		return check(name, err), nil
	})
	if err != nil {
		return fmt.Errorf("the edit (%s) did not take effect: %w", what, err)
	}
	fmt.Fprintf(d.out, "   in force %s after the file was saved\n", time.Since(start).Round(10*time.Millisecond))
	return nil
}

func (d *demo) until(ctx context.Context, limit time.Duration, cond func() (bool, error)) error {
	deadline := time.Now().Add(limit)
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("still not so after %s", limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// curlOnce makes one request to the VIP and returns who answered ("" if
// the request failed).
func (d *demo) curlOnce(ctx context.Context) (string, error) {
	out, err := d.client.Output(d.client.Command(ctx, "curl", "-sS", "--max-time", "2", fmt.Sprintf("http://%s:%d/", vip, vipPort)))
	if err != nil {
		return "", err
	}
	f := strings.Fields(string(out))
	if len(f) == 0 {
		return "", errors.New("empty answer")
	}
	return f[0], nil
}

// connectError returns the error bash reports when connecting to the VIP,
// or "" if the connection succeeded.
func (d *demo) connectError(ctx context.Context) string {
	_, err := d.client.Output(d.client.Command(ctx, "bash", "-c", fmt.Sprintf("exec 3<>/dev/tcp/%s/%d", vip, vipPort)))
	if err == nil {
		return ""
	}
	msg := err.Error()
	if i := strings.Index(msg, "connect: "); i >= 0 {
		msg = msg[i+len("connect: "):]
	}
	msg, _, _ = strings.Cut(msg, "\n")
	return strings.TrimSpace(msg)
}

// startBackend starts a backend in its pod and waits until it listens.
func startBackend(pod *cluster.Pod, cmd *exec.Cmd) error {
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := pod.Start(cmd); err != nil {
		return err
	}
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err == nil && line != "ready\n" {
			err = fmt.Errorf("unexpected output %q", line)
		}
		ready <- err
	}()
	select {
	case err := <-ready:
		if err != nil {
			return fmt.Errorf("backend in pod %s did not start: %w", pod.Name, err)
		}
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("backend in pod %s did not start within 10s", pod.Name)
	}
}

// requests makes n HTTP requests to the VIP with one curl process from the
// client pod, each on a new connection, and counts who answered. It checks
// that curl saw the VIP as its peer every time.
func (d *demo) requests(ctx context.Context) (map[string]int, error) {
	n := d.opts.Requests
	url := fmt.Sprintf("http://%s:%d/", vip, vipPort)
	args := []string{"-sS", "--max-time", "10", "-H", "Connection: close",
		"-w", " %{remote_ip}:%{remote_port} %{num_connects}\n"}
	for range n {
		args = append(args, url)
	}
	raw, err := d.client.Output(d.client.Command(ctx, "curl", args...))
	if err != nil {
		return nil, fmt.Errorf("curl from pod client: %w", err)
	}
	counts := make(map[string]int)
	for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		// "<backend> <backend addr>" from the server, then curl's -w fields.
		f := strings.Fields(line)
		if len(f) != 4 {
			return nil, fmt.Errorf("unexpected curl output line %q", line)
		}
		if want := fmt.Sprintf("%s:%d", vip, vipPort); f[2] != want || f[3] != "1" {
			return nil, fmt.Errorf("curl saw peer %s with %s new connections, want %s on a new connection", f[2], f[3], want)
		}
		counts[f[0]]++
	}
	total := 0
	for _, k := range counts {
		total += k
	}
	if total != n {
		return nil, fmt.Errorf("curl reported %d answers for %d requests", total, n)
	}
	fmt.Fprintf(d.out, "   %d requests with curl from pod client, one new connection each:\n", n)
	for _, name := range backendNames {
		fmt.Fprintf(d.out, "     %-10s %3d  %s\n", name, counts[name], strings.Repeat("#", counts[name]))
	}
	fmt.Fprintf(d.out, "   curl's peer address (getpeername) was %s:%d on every connection\n", vip, vipPort)
	return counts, nil
}
