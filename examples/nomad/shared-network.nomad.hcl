# Two tasks of one group sharing the group's network namespace: the client reaches the server on
# localhost. Each task is its own pod; both join the namespace Nomad made through the driver.
#   nomad job run examples/nomad/shared-network.nomad.hcl
#   nomad alloc logs <alloc> client
job "pypod-pair" {
  datacenters = ["dc1"]
  type        = "service"

  group "pair" {
    network {
      mode = "bridge"
    }

    task "server" {
      driver = "pypod"
      config {
        image   = "busybox"
        command = "/bin/sh"
        args    = ["-c", "echo pong > /local/ping && exec httpd -f -p 127.0.0.1:8080 -h /local"]
      }
      resources {
        cpu    = 100
        memory = 32
      }
    }

    task "client" {
      driver = "pypod"
      config {
        image   = "busybox"
        command = "/bin/sh"
        args    = ["-c", "while true; do wget -q -O - http://127.0.0.1:8080/ping; sleep 5; done"]
      }
      resources {
        cpu    = 100
        memory = 32
      }
    }
  }
}
