// A Nomad client's view of nomad-driver-pypod, through hashicorp/go-plugin's real client with
// Nomad's handshake configuration, cty-msgpack configs (go-cty, as Nomad encodes them) and Go
// stubs generated from pypod's own .proto files (gen/, made by pypod.nomad.proto.generate).
//
// Run by tests/nomad/test_nomad_goharness.py with:
//   PYPOD_NOMAD_PLUGIN   the plugin executable
//   PYPOD_DATA_DIR       a pypod data dir holding the image "busybox"
//   PYPOD_CONFIG_DIR     its config dir
package goharness

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	plugin "github.com/hashicorp/go-plugin"
	"github.com/zclconf/go-cty/cty"
	ctymsgpack "github.com/zclconf/go-cty/cty/msgpack"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	"pypod.test/goharness/gen/base"
	"pypod.test/goharness/gen/drivers"
	"pypod.test/goharness/gen/hclspec"
)

// Nomad's base.Handshake (plugins/base/plugin.go).
var handshake = plugin.HandshakeConfig{
	ProtocolVersion:  2,
	MagicCookieKey:   "NOMAD_PLUGIN_MAGIC_COOKIE",
	MagicCookieValue: "e4327c2e01eabfd75a8a67adb114fb34a757d57eee7728d857a8cec6e91a7255",
}

type stubs struct {
	base   base.BasePluginClient
	driver drivers.DriverClient
}

// driverPlugin is the client half only: go-plugin dispenses it over the plugin's gRPC connection.
type driverPlugin struct {
	plugin.NetRPCUnsupportedPlugin
}

func (driverPlugin) GRPCServer(*plugin.GRPCBroker, *grpc.Server) error {
	return fmt.Errorf("client only")
}

func (driverPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (interface{}, error) {
	return &stubs{base: base.NewBasePluginClient(c), driver: drivers.NewDriverClient(c)}, nil
}

func env(t *testing.T, k string) string {
	v := os.Getenv(k)
	if v == "" {
		t.Skipf("%s not set: run through tests/nomad/test_nomad_goharness.py", k)
	}
	return v
}

// launch starts the plugin as Nomad's loader does (plugin.NewClient with only the handshake,
// the command, gRPC allowed and a logger: no TLS, no AutoMTLS) and dispenses the driver.
func launch(t *testing.T) (*plugin.Client, *stubs) {
	logger := hclog.New(&hclog.LoggerOptions{Name: "client.driver_mgr.pypod", Level: hclog.Debug,
		Output: testWriter{t}})
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  handshake,
		Plugins:          map[string]plugin.Plugin{"driver": driverPlugin{}},
		Cmd:              exec.Command(env(t, "PYPOD_NOMAD_PLUGIN")),
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           logger,
	})
	rpc, err := client.Client()
	if err != nil {
		client.Kill()
		t.Fatalf("launching the plugin: %v", err)
	}
	if err := rpc.Ping(); err != nil { // grpc.health.v1 Check("plugin")
		t.Fatalf("ping: %v", err)
	}
	raw, err := rpc.Dispense("driver")
	if err != nil {
		t.Fatalf("dispense: %v", err)
	}
	return client, raw.(*stubs)
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// msgpackOf builds the cty object of a schema's root with every attribute (null when unset), as
// Nomad's hcldec would, and encodes it with go-cty's msgpack, as Nomad does.
func msgpackOf(t *testing.T, attrs map[string]string, vals map[string]cty.Value) []byte {
	all := map[string]cty.Value{}
	for name, ty := range attrs {
		if v, ok := vals[name]; ok {
			all[name] = v
			continue
		}
		all[name] = cty.NullVal(ctyType(ty))
	}
	obj := cty.ObjectVal(all)
	b, err := ctymsgpack.Marshal(obj, obj.Type())
	if err != nil {
		t.Fatalf("msgpack: %v", err)
	}
	return b
}

func ctyType(ty string) cty.Type {
	switch ty {
	case "string":
		return cty.String
	case "bool":
		return cty.Bool
	case "number":
		return cty.Number
	case "list(string)":
		return cty.List(cty.String)
	case "map(string)":
		return cty.Map(cty.String)
	}
	return cty.DynamicPseudoType
}

// attrTypes reads the HCL types of a root object spec's attributes ("block" for blocks).
func attrTypes(s *hclspec.Spec) map[string]string {
	out := map[string]string{}
	for name, a := range s.GetObject().GetAttributes() {
		if d := a.GetDefault(); d != nil {
			a = d.GetPrimary()
		}
		switch {
		case a.GetAttr() != nil:
			out[name] = a.GetAttr().GetType()
		case a.GetBlockValue() != nil:
			out[name] = "block"
		}
	}
	return out
}

func TestNomadClientSequence(t *testing.T) {
	dataDir, configDir := env(t, "PYPOD_DATA_DIR"), env(t, "PYPOD_CONFIG_DIR")
	ctx := context.Background()

	// -- launch 1 (fingerprint): PluginInfo, ConfigSchema, Kill (GRPCController.Shutdown)
	client, p := launch(t)
	info, err := p.base.PluginInfo(ctx, &base.PluginInfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if info.Type != base.PluginType_DRIVER || info.Name != "pypod" || len(info.PluginApiVersions) != 1 ||
		info.PluginApiVersions[0] != "v0.1.0" || info.PluginVersion != "0.1.0" {
		t.Fatalf("PluginInfo: %v", info)
	}
	cs, err := p.base.ConfigSchema(ctx, &base.ConfigSchemaRequest{})
	if err != nil {
		t.Fatal(err)
	}
	agentTypes := attrTypes(cs.Spec)
	if agentTypes["runtime"] != "string" || agentTypes["allow_privileged"] != "bool" {
		t.Fatalf("ConfigSchema: %v", agentTypes)
	}
	start := time.Now()
	client.Kill()
	if d := time.Since(start); d >= 2*time.Second {
		t.Fatalf("the plugin needed %v to exit after Shutdown (go-plugin kills after 2 s)", d)
	}

	// -- launch 3 (long-lived): SetConfig with nomad_config, Init, Fingerprint
	client, p = launch(t)
	defer client.Kill()
	agentCfg := msgpackOf(t, agentTypes, map[string]cty.Value{
		"data_dir": cty.StringVal(dataDir), "config_dir": cty.StringVal(configDir),
		"gc": cty.NullVal(cty.Object(map[string]cty.Type{"container": cty.Bool})),
	})
	_, err = p.base.SetConfig(ctx, &base.SetConfigRequest{MsgpackConfig: agentCfg, PluginApiVersion: "v0.1.0",
		NomadConfig: &base.NomadConfig{Driver: &base.NomadDriverConfig{ClientMinPort: 14000, ClientMaxPort: 14512}}})
	if err != nil {
		t.Fatalf("SetConfig: %v", err)
	}
	if _, err := p.driver.Init(ctx, &drivers.InitRequest{}); err != nil {
		t.Fatalf("Init: %v", err)
	}
	fctx, fcancel := context.WithCancel(ctx)
	fp, err := p.driver.Fingerprint(fctx, &drivers.FingerprintRequest{})
	if err != nil {
		t.Fatal(err)
	}
	first, err := fp.Recv()
	if err != nil {
		t.Fatal(err)
	}
	fcancel()
	if first.Health != drivers.FingerprintResponse_HEALTHY || !first.Attributes["driver.pypod"].GetBoolVal() {
		t.Fatalf("Fingerprint: %v", first)
	}

	// -- a task: TaskConfigSchema, StartTask, WaitTask, InspectTask, DestroyTask
	ts, err := p.driver.TaskConfigSchema(ctx, &drivers.TaskConfigSchemaRequest{})
	if err != nil {
		t.Fatal(err)
	}
	taskTypes := attrTypes(ts.Spec)
	allocDir := t.TempDir()
	task := func(name string, args ...string) *drivers.TaskConfig {
		for _, d := range []string{"alloc/data", "alloc/logs", "alloc/tmp", name + "/local", name + "/secrets", name + "/tmp"} {
			os.MkdirAll(filepath.Join(allocDir, d), 0o755)
		}
		cfg := msgpackOf(t, taskTypes, map[string]cty.Value{
			"image": cty.StringVal("busybox"), "command": cty.StringVal("/bin/sh"),
			"args":  cty.ListVal(stringVals(args)),
			"mount": cty.NullVal(cty.Object(map[string]cty.Type{"type": cty.String, "source": cty.String, "target": cty.String, "readonly": cty.Bool})),
			"auth":  cty.NullVal(cty.Object(map[string]cty.Type{"username": cty.String, "password": cty.String})),
		})
		return &drivers.TaskConfig{
			Id: "6f1e2d3c-aaaa-bbbb-cccc-000000000001/" + name + "/0a1b2c3d", Name: name, MsgpackDriverConfig: cfg,
			Env: map[string]string{"NOMAD_TASK_NAME": name, "NOMAD_ALLOC_DIR": "/alloc", "NOMAD_TASK_DIR": "/local",
				"NOMAD_SECRETS_DIR": "/secrets"},
			Resources: &drivers.Resources{
				AllocatedResources: &drivers.AllocatedTaskResources{Cpu: &drivers.AllocatedCpuResources{CpuShares: 100},
					Memory: &drivers.AllocatedMemoryResources{MemoryMb: 64}},
				LinuxResources: &drivers.LinuxResources{CpuShares: 100, MemoryLimitBytes: 64 << 20}},
			AllocDir: allocDir, StdoutPath: filepath.Join(allocDir, "alloc/logs", name+".stdout.0"),
			StderrPath: "/dev/null", TaskGroupName: "g", JobName: "j", AllocId: "6f1e2d3c-aaaa-bbbb-cccc-000000000001",
		}
	}
	batch := task("batch", "-c", "echo hello-go; exit 3")
	st, err := p.driver.StartTask(ctx, &drivers.StartTaskRequest{Task: batch})
	if err != nil {
		t.Fatalf("StartTask: %v", err)
	}
	if st.Handle == nil || st.Handle.Version < 1 || st.Handle.Config.GetId() != batch.Id || st.Handle.State != drivers.TaskState_RUNNING {
		t.Fatalf("StartTask handle: %v", st.Handle)
	}
	wctx, wcancel := context.WithTimeout(ctx, time.Minute)
	defer wcancel()
	w, err := p.driver.WaitTask(wctx, &drivers.WaitTaskRequest{TaskId: batch.Id})
	if err != nil || w.Result.ExitCode != 3 {
		t.Fatalf("WaitTask: %v %v", w, err)
	}
	in, err := p.driver.InspectTask(ctx, &drivers.InspectTaskRequest{TaskId: batch.Id})
	if err != nil || in.Task.State != drivers.TaskState_EXITED || in.Task.Result.ExitCode != 3 ||
		in.Task.StartedAt.AsTime().IsZero() || in.Task.CompletedAt.AsTime().Before(in.Task.StartedAt.AsTime()) {
		t.Fatalf("InspectTask: %v %v", in, err)
	}
	out, _ := os.ReadFile(batch.StdoutPath)
	if string(out) != "hello-go\n" {
		t.Fatalf("stdout: %q", out)
	}
	if _, err := p.driver.DestroyTask(ctx, &drivers.DestroyTaskRequest{TaskId: batch.Id, Force: true}); err != nil {
		t.Fatalf("DestroyTask: %v", err)
	}

	// -- a service task outlives the plugin: Kill, relaunch, RecoverTask, StopTask, DestroyTask
	svc := task("svc", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done")
	st, err = p.driver.StartTask(ctx, &drivers.StartTaskRequest{Task: svc})
	if err != nil {
		t.Fatalf("StartTask: %v", err)
	}
	handle := st.Handle
	start = time.Now()
	client.Kill()
	if d := time.Since(start); d >= 2*time.Second {
		t.Fatalf("the plugin needed %v to exit after Shutdown", d)
	}
	client, p = launch(t)
	defer client.Kill()
	if _, err := p.base.SetConfig(ctx, &base.SetConfigRequest{MsgpackConfig: agentCfg, PluginApiVersion: "v0.1.0"}); err != nil {
		t.Fatal(err)
	}
	if _, err := p.driver.RecoverTask(ctx, &drivers.RecoverTaskRequest{Handle: handle}); err != nil {
		t.Fatalf("RecoverTask: %v", err)
	}
	in, err = p.driver.InspectTask(ctx, &drivers.InspectTaskRequest{TaskId: svc.Id})
	if err != nil || in.Task.State != drivers.TaskState_RUNNING {
		t.Fatalf("the task did not survive the plugin: %v %v", in, err)
	}
	if _, err := p.driver.StopTask(ctx, &drivers.StopTaskRequest{TaskId: svc.Id, Timeout: durationpb.New(5 * time.Second),
		Signal: "SIGTERM"}); err != nil {
		t.Fatalf("StopTask: %v", err)
	}
	w, err = p.driver.WaitTask(wctx, &drivers.WaitTaskRequest{TaskId: svc.Id})
	if err != nil || w.Result.ExitCode != 0 {
		t.Fatalf("WaitTask after StopTask: %v %v", w, err)
	}
	if _, err := p.driver.DestroyTask(ctx, &drivers.DestroyTaskRequest{TaskId: svc.Id, Force: true}); err != nil {
		t.Fatalf("DestroyTask: %v", err)
	}
}

func stringVals(ss []string) []cty.Value {
	out := make([]cty.Value, len(ss))
	for i, s := range ss {
		out[i] = cty.StringVal(s)
	}
	return out
}
