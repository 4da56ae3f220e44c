# A service in bridge mode: Nomad creates the group's network namespace through the driver
# (CreateNetwork), sets the bridge and the port forward up with CNI, and the task joins it.
#   nomad job run examples/nomad/service.nomad.hcl
#   curl http://<client address>:8080/
job "pypod-web" {
  datacenters = ["dc1"]
  type        = "service"

  group "web" {
    count = 1

    network {
      mode = "bridge"
      port "http" {
        static = 8080
        to     = 80
      }
    }

    task "httpd" {
      driver = "pypod"

      config {
        image   = "busybox"
        command = "/bin/sh"
        args    = ["-c", "echo 'hello from pypod' > /local/index.html && exec httpd -f -v -p 80 -h /local"]
        ports   = ["http"]
        cap_drop = ["net_raw"]
        readonly_rootfs = true
      }

      service {
        name     = "pypod-web"
        port     = "http"
        provider = "nomad"
        check {
          type     = "script"      # runs through the driver's ExecTask
          command  = "/bin/wget"
          args     = ["-q", "-O", "/dev/null", "http://127.0.0.1:80/"]
          interval = "10s"
          timeout  = "2s"
        }
      }

      kill_signal  = "SIGTERM"
      kill_timeout = "5s"

      resources {
        cpu        = 200
        memory     = 64
        memory_max = 128
      }
    }
  }
}
