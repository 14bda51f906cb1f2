package kube

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// ServiceCIDRs are the service address ranges of every control plane, one
// per family: Services get addresses from both.
var ServiceCIDRs = []string{"10.96.0.0/16", "fd00:10:96::/112"}

// controllers are the kube-controller-manager controllers a control plane
// runs: Deployments to ReplicaSets to Pods, EndpointSlices for Services,
// namespace deletion, garbage collection (owner references), and service
// accounts with their tokens and the cluster CA config map. Node-facing
// controllers are left out: there are no kubelets, and the pod garbage
// collector would delete the pods that tests bind to made-up nodes.
var controllers = []string{
	"deployment-controller",
	"replicaset-controller",
	"endpointslice-controller",
	"endpointslice-mirroring-controller",
	"namespace-controller",
	"garbage-collector-controller",
	"serviceaccount-controller",
	"serviceaccount-token-controller",
	"root-ca-certificate-publisher-controller",
}

// How long each step of Start may take. Generous: on a loaded two-CPU
// machine the API server alone can take half a minute to become ready.
const (
	startTimeout = 3 * time.Minute
	stopTimeout  = 20 * time.Second
)

// ControlPlane is a running etcd, kube-apiserver and
// kube-controller-manager, all on 127.0.0.1, with their files (certificates,
// kubeconfigs, etcd data, logs) under one directory. There is no scheduler
// and no kubelet: tests bind pods and set their status themselves. Close
// stops it. Its methods are safe for concurrent use.
type ControlPlane struct {
	dir        string
	host       string // https://127.0.0.1:port
	caPEM      []byte
	admin      *rest.Config
	kubeconfig string
	kcmCreds   keyPair // the controller manager's client certificate

	procs []*process // in start order

	closeOnce sync.Once
	closeErr  error
}

// process is one running binary, its output in logPath.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed when the process has exited
	err     error         // why it exited; read after done is closed
}

// Start runs a control plane from bins with its files under dir (created
// if missing; Close empties it). It returns once the API server's /readyz
// is ok and the controller manager has made the default namespace's
// service account. On failure it stops whatever it started and says which
// process failed, with the end of that process's log.
func Start(ctx context.Context, dir string, bins Paths) (_ *ControlPlane, err error) {
	for _, d := range []string{dir, filepath.Join(dir, "pki"), filepath.Join(dir, "logs")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("start control plane: %w", err)
		}
	}
	cp := &ControlPlane{dir: dir}
	defer func() {
		if err != nil {
			cp.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()

	files, err := cp.writePKI()
	if err != nil {
		return nil, err
	}
	etcdURL, err := cp.startEtcd(ctx, bins.Etcd)
	if err != nil {
		return nil, err
	}
	if err := cp.startAPIServer(ctx, bins.APIServer, etcdURL, files); err != nil {
		return nil, err
	}
	if err := cp.startControllerManager(ctx, bins.ControllerManager, files); err != nil {
		return nil, err
	}
	return cp, nil
}

// pkiFiles are the paths of the files writePKI wrote.
type pkiFiles struct {
	ca, servingCert, servingKey, saKey, kcmKubeconfig string
}

func (cp *ControlPlane) writePKI() (pkiFiles, error) {
	pki := filepath.Join(cp.dir, "pki")
	ca, err := newAuthority("sluice-test-kubernetes-ca")
	if err != nil {
		return pkiFiles{}, err
	}
	// The names a client inside the cluster would use for the
	// "kubernetes" Service, and its first service address.
	serving, err := ca.serving("kube-apiserver",
		[]string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
		[]net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback, net.IPv4(10, 96, 0, 1)})
	if err != nil {
		return pkiFiles{}, err
	}
	// system:masters passes every authorization check; the controller
	// manager gets the user the RBAC bootstrap policy grants its rights to.
	admin, err := ca.client("sluice-test-admin", "system:masters")
	if err != nil {
		return pkiFiles{}, err
	}
	kcm, err := ca.client("system:kube-controller-manager")
	if err != nil {
		return pkiFiles{}, err
	}
	saKey, err := newSigningKey()
	if err != nil {
		return pkiFiles{}, err
	}
	f := pkiFiles{
		ca:            filepath.Join(pki, "ca.crt"),
		servingCert:   filepath.Join(pki, "apiserver.crt"),
		servingKey:    filepath.Join(pki, "apiserver.key"),
		saKey:         filepath.Join(pki, "service-account.key"),
		kcmKubeconfig: filepath.Join(cp.dir, "controller-manager.kubeconfig"),
	}
	for path, data := range map[string][]byte{
		f.ca: ca.certPEM, f.servingCert: serving.certPEM, f.servingKey: serving.keyPEM, f.saKey: saKey,
	} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			return pkiFiles{}, fmt.Errorf("write control-plane credentials: %w", err)
		}
	}
	cp.caPEM = ca.certPEM
	cp.admin = &rest.Config{
		TLSClientConfig: rest.TLSClientConfig{CAData: ca.certPEM, CertData: admin.certPEM, KeyData: admin.keyPEM},
		QPS:             50,
		Burst:           100,
	}
	// The kubeconfigs need the API server's port, known only when it
	// starts: startAPIServer writes them. Keep the controller manager's
	// credentials until then.
	cp.kcmCreds = kcm
	return f, nil
}

// startEtcd starts etcd on free loopback ports and waits for its health
// endpoint. It returns the client URL.
func (cp *ControlPlane) startEtcd(ctx context.Context, bin string) (string, error) {
	var clientURL string
	err := retryPorts(2, func(ports []int) (*process, error) {
		clientURL = "http://127.0.0.1:" + strconv.Itoa(ports[0])
		peerURL := "http://127.0.0.1:" + strconv.Itoa(ports[1])
		p, err := cp.spawn("etcd", bin,
			"--name=default",
			"--data-dir="+filepath.Join(cp.dir, "etcd"),
			"--listen-client-urls="+clientURL,
			"--advertise-client-urls="+clientURL,
			"--listen-peer-urls="+peerURL,
			"--initial-advertise-peer-urls="+peerURL,
			"--initial-cluster=default="+peerURL,
			// The data is thrown away with the test; fsync would only make
			// every write wait for the disk.
			"--unsafe-no-fsync",
			"--log-level=warn",
		)
		if err != nil {
			return nil, err
		}
		return p, cp.waitFor(ctx, p, func(ctx context.Context) error {
			return httpOK(ctx, http.DefaultClient, clientURL+"/health")
		})
	})
	return clientURL, err
}

func (cp *ControlPlane) startAPIServer(ctx context.Context, bin, etcdURL string, f pkiFiles) error {
	return retryPorts(1, func(ports []int) (*process, error) {
		cp.host = "https://127.0.0.1:" + strconv.Itoa(ports[0])
		cp.admin.Host = cp.host
		if err := cp.writeKubeconfigs(f); err != nil {
			return nil, err
		}
		p, err := cp.spawn("kube-apiserver", bin,
			"--etcd-servers="+etcdURL,
			"--bind-address=127.0.0.1",
			"--advertise-address=127.0.0.1",
			"--secure-port="+strconv.Itoa(ports[0]),
			"--tls-cert-file="+f.servingCert,
			"--tls-private-key-file="+f.servingKey,
			"--client-ca-file="+f.ca,
			"--service-cluster-ip-range="+strings.Join(ServiceCIDRs, ","),
			"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
			"--service-account-key-file="+f.saKey,
			"--service-account-signing-key-file="+f.saKey,
			"--authorization-mode=RBAC",
			// Node agents (Sluice's DaemonSet) run privileged containers.
			"--allow-privileged=true",
			// The reconciler would publish the advertise address as the
			// endpoint of the "kubernetes" Service, and endpoint addresses
			// may not be loopback. The Service itself is still made.
			"--endpoint-reconciler-type=none",
			"--profiling=false",
		)
		if err != nil {
			return nil, err
		}
		client, err := kubernetes.NewForConfig(cp.admin)
		if err != nil {
			return p, fmt.Errorf("admin client: %w", err)
		}
		return p, cp.waitFor(ctx, p, func(ctx context.Context) error {
			body, err := client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
			if err != nil {
				return fmt.Errorf("/readyz: %w: %s", err, body)
			}
			return nil
		})
	})
}

func (cp *ControlPlane) startControllerManager(ctx context.Context, bin string, f pkiFiles) error {
	p, err := cp.spawn("kube-controller-manager", bin,
		"--kubeconfig="+f.kcmKubeconfig,
		"--leader-elect=false",
		// It serves only health and metrics, which nobody reads here; no
		// port, no collision.
		"--secure-port=0",
		"--controllers="+strings.Join(controllers, ","),
		// Each controller acts as its own service account with the rights
		// the RBAC bootstrap policy gives it, as in a real cluster.
		"--use-service-account-credentials=true",
		"--service-account-private-key-file="+f.saKey,
		"--root-ca-file="+f.ca,
	)
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(cp.admin)
	if err != nil {
		return fmt.Errorf("admin client: %w", err)
	}
	// The service-account controller making "default" in "default" shows
	// the controller manager is up, authenticated and authorized.
	return cp.waitFor(ctx, p, func(ctx context.Context) error {
		_, err := client.CoreV1().ServiceAccounts(metav1.NamespaceDefault).Get(ctx, "default", metav1.GetOptions{})
		return err
	})
}

// writeKubeconfigs writes the admin kubeconfig (for people and tools) and
// the controller manager's, both with their credentials embedded.
func (cp *ControlPlane) writeKubeconfigs(f pkiFiles) error {
	cp.kubeconfig = filepath.Join(cp.dir, "admin.kubeconfig")
	for path, creds := range map[string]keyPair{
		cp.kubeconfig:   {certPEM: cp.admin.CertData, keyPEM: cp.admin.KeyData},
		f.kcmKubeconfig: cp.kcmCreds,
	} {
		cfg := clientcmdapi.NewConfig()
		cfg.Clusters["sluice-test"] = &clientcmdapi.Cluster{Server: cp.host, CertificateAuthorityData: cp.caPEM}
		cfg.AuthInfos["user"] = &clientcmdapi.AuthInfo{ClientCertificateData: creds.certPEM, ClientKeyData: creds.keyPEM}
		cfg.Contexts["sluice-test"] = &clientcmdapi.Context{Cluster: "sluice-test", AuthInfo: "user"}
		cfg.CurrentContext = "sluice-test"
		if err := clientcmd.WriteToFile(*cfg, path); err != nil {
			return fmt.Errorf("write kubeconfig: %w", err)
		}
	}
	return nil
}

// spawn starts bin with its output in logs/<name>.log.
func (cp *ControlPlane) spawn(name, bin string, args ...string) (*process, error) {
	logPath := filepath.Join(cp.dir, "logs", name+".log")
	out, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	fmt.Fprintf(out, "# %s %s\n", bin, strings.Join(args, " "))
	cmd := exec.Command(bin, args...)
	cmd.Dir = cp.dir
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		out.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	cp.procs = append(cp.procs, p)
	go func() {
		p.err = cmd.Wait()
		out.Close()
		close(p.done)
	}()
	return p, nil
}

// waitFor polls ready until it succeeds, p exits, or ctx ends.
func (cp *ControlPlane) waitFor(ctx context.Context, p *process, ready func(context.Context) error) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		attempt, cancel := context.WithTimeout(ctx, 5*time.Second)
		last = ready(attempt)
		cancel()
		if last == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited while starting: %v\n%s", p.name, p.err, tail(p.logPath, 30))
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %w (last: %v)\n%s", p.name, ctx.Err(), last, tail(p.logPath, 30))
		case <-tick.C:
		}
	}
}

// errPortTaken says a process could not bind a port picked as free: another
// process took it in between.
var errPortTaken = errors.New("port taken")

// retryPorts picks n free loopback ports and runs start with them, again
// with new ports (a few times) when the process exits saying a port is
// already in use.
func retryPorts(n int, start func(ports []int) (*process, error)) error {
	var err error
	for range 3 {
		var ports []int
		if ports, err = freePorts(n); err != nil {
			return err
		}
		var p *process
		p, err = start(ports)
		if err == nil || p == nil {
			return err
		}
		select {
		case <-p.done:
		default:
			return err
		}
		if !strings.Contains(tail(p.logPath, 50), "address already in use") {
			return err
		}
		err = fmt.Errorf("%w: %v", errPortTaken, err)
	}
	return err
}

// freePorts returns n loopback TCP ports that were free a moment ago.
func freePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func httpOK(ctx context.Context, client *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", url, resp.Status, body)
	}
	return nil
}

// Config returns a client configuration of the cluster admin (group
// system:masters). Each call returns a new copy.
func (cp *ControlPlane) Config() *rest.Config {
	return rest.CopyConfig(cp.admin)
}

// Kubeconfig returns the path of a kubeconfig file for the admin, for
// programs that read one (kubectl --kubeconfig, KUBECONFIG=).
func (cp *ControlPlane) Kubeconfig() string {
	return cp.kubeconfig
}

// Dir returns the directory holding the control plane's files.
func (cp *ControlPlane) Dir() string {
	return cp.dir
}

// ServiceAccountConfig returns a client configuration that authenticates
// as the service account namespace/name with a fresh token from the
// TokenRequest API, as a kubelet would mount one into a pod, so a test sees
// exactly what that account's RBAC rights allow. The service account must
// exist.
func (cp *ControlPlane) ServiceAccountConfig(ctx context.Context, namespace, name string) (*rest.Config, error) {
	client, err := kubernetes.NewForConfig(cp.admin)
	if err != nil {
		return nil, fmt.Errorf("admin client: %w", err)
	}
	expiry := int64(time.Hour / time.Second)
	tr, err := client.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &expiry},
	}, metav1.CreateOptions{})
	if err != nil {
		if apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("token for service account %s/%s: %w (create the service account first)", namespace, name, err)
		}
		return nil, fmt.Errorf("token for service account %s/%s: %w", namespace, name, err)
	}
	return &rest.Config{
		Host:            cp.host,
		BearerToken:     tr.Status.Token,
		TLSClientConfig: rest.TLSClientConfig{CAData: cp.caPEM},
		QPS:             cp.admin.QPS,
		Burst:           cp.admin.Burst,
	}, nil
}

// Logs returns the last n lines of each process's log, headed by its name,
// for a test failure.
func (cp *ControlPlane) Logs(n int) string {
	var b strings.Builder
	for _, p := range cp.procs {
		fmt.Fprintf(&b, "==> %s (last %d lines of %s)\n%s\n", p.name, n, p.logPath, tail(p.logPath, n))
	}
	return b.String()
}

// Close stops the processes (newest first: SIGTERM, then SIGKILL to the
// process group after a grace period), waits until each has exited, and
// removes the contents of the directory. Calling it again returns the
// first result.
func (cp *ControlPlane) Close() error {
	cp.closeOnce.Do(func() {
		var errs []error
		for i := len(cp.procs) - 1; i >= 0; i-- {
			if err := cp.procs[i].stop(); err != nil {
				errs = append(errs, err)
			}
		}
		entries, err := os.ReadDir(cp.dir)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove control-plane files: %w", err))
		}
		for _, e := range entries {
			if err := os.RemoveAll(filepath.Join(cp.dir, e.Name())); err != nil {
				errs = append(errs, fmt.Errorf("remove control-plane files: %w", err))
			}
		}
		cp.closeErr = errors.Join(errs...)
	})
	return cp.closeErr
}

func (p *process) stop() error {
	select {
	case <-p.done:
		return nil // exited by itself; Logs tells why
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(stopTimeout):
	}
	killGroup(p.cmd.Process.Pid)
	select {
	case <-p.done:
		return fmt.Errorf("%s did not stop within %v of SIGTERM; killed", p.name, stopTimeout)
	case <-time.After(stopTimeout):
		return fmt.Errorf("%s (pid %d) survived SIGKILL", p.name, p.cmd.Process.Pid)
	}
}

// tail returns the last n lines of the file at path.
func tail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	return lastLines(data, n)
}
