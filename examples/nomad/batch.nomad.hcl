# A batch task: runs once, its output in `nomad alloc logs`.
#   pypod fetch docker://busybox:latest --name busybox    # or let the driver pull it
#   nomad job run examples/nomad/batch.nomad.hcl
job "pypod-hello" {
  datacenters = ["dc1"]
  type        = "batch"

  group "hello" {
    restart {
      attempts = 0
      mode     = "fail"
    }

    task "hello" {
      driver = "pypod"

      config {
        image   = "busybox"
        command = "/bin/sh"
        args    = ["-c", "echo hello from ${NOMAD_TASK_NAME} in alloc ${NOMAD_ALLOC_ID}; ls /alloc /local /secrets"]
      }

      resources {
        cpu    = 100 # MHz: cpu shares
        memory = 64  # MiB: the cgroup's memory limit (memory_max when set)
      }
    }
  }
}
