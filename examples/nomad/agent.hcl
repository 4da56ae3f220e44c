# A Nomad client running tasks with driver = "pypod".
#
#   install -m 0755 "$(command -v nomad-driver-pypod)" /opt/nomad/plugins/nomad-driver-pypod
#   nomad agent -dev -bind=127.0.0.1 -plugin-dir=/opt/nomad/plugins -config=examples/nomad/agent.hcl
#
# The block's name is the executable's file name in plugin_dir (Nomad >= 1.10 loads only the
# plugins named here); jobs use the driver's own name, "pypod". Root is needed (pods, netns, cgroups).

log_level  = "INFO"   # the plugin's stderr (hclog JSON) shows up as client.driver_mgr.nomad-driver-pypod
plugin_dir = "/opt/nomad/plugins"

plugin "nomad-driver-pypod" {
  # args = ["--log-level", "debug"]
  config {
    data_dir           = "/var/lib/pypod"   # "" means pypod's own default (pypod.toml, else /var/lib/pypod)
    runtime            = "crun"             # crun | runc | "" (probed)
    default_network    = "default"          # CNI network for tasks in host-mode groups (network_mode unset)
    allow_privileged   = false              # privileged = true in a task is refused unless true
    allow_host_volumes = false              # config.volumes / mount { type = "bind" } need this
    allowed_caps       = ["audit_write", "chown", "dac_override", "fowner", "fsetid", "kill", "mknod",
                          "net_bind_service", "net_raw", "setfcap", "setgid", "setpcap", "setuid", "sys_chroot"]
    image_pull_timeout = "5m"                # then the pull is killed and StartTask fails (Nomad retries it);
                                            # its partial download is removed by `pypod image gc`
    gc {
      container = true                      # remove a task's pod when Nomad destroys the task
    }
  }
}
