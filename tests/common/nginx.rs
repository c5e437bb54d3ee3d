//! A real nginx with the API.md block in front of one or more wspush servers.

use super::{free_ports, temp_dir};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const NGINX: &str = "/usr/sbin/nginx";

pub struct Nginx {
    pub port: u16,
    pub dir: PathBuf,
    child: Child,
}

impl Nginx {
    /// Starts nginx on a free port with the README block of the original (API.md), its upstream
    /// pointing at `backends`; `read_timeout` replaces the block's `proxy_read_timeout 60s`.
    pub fn start(backends: &[u16], read_timeout: &str) -> Nginx {
        let (port, _) = free_ports();
        let dir = temp_dir("nginx");
        let servers: String = backends
            .iter()
            .map(|p| format!("        server 127.0.0.1:{p};\n"))
            .collect();
        let d = dir.display();
        let conf = format!(
            "daemon off;\n\
             master_process off;\n\
             worker_processes 1;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/error.log info;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n\
               access_log {d}/access.log;\n\
               client_body_temp_path {d}/body;\n\
               proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n\
               uwsgi_temp_path {d}/uwsgi;\n\
               scgi_temp_path {d}/scgi;\n\
               upstream ws_cluster {{\n{servers}    }}\n\
               server {{\n\
                 listen 127.0.0.1:{port};\n\
                 server_name ws.example.com;\n\
                 location /ws {{\n\
                   proxy_pass http://ws_cluster;\n\
                   proxy_http_version 1.1;\n\
                   # Above the server's ping interval, or idle WebSockets are cut.\n\
                   proxy_read_timeout {read_timeout};\n\
                   proxy_set_header Upgrade $http_upgrade;\n\
                   proxy_set_header Connection \"upgrade\";\n\
                   proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
                 }}\n\
                 location /api {{\n\
                   proxy_set_header X-Forwarded-For $remote_addr;\n\
                   proxy_set_header Host            $http_host;\n\
                   proxy_pass http://ws_cluster;\n\
                 }}\n\
               }}\n\
             }}\n"
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new(NGINX)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {NGINX} (make test installs it): {e}"));
        let nginx = Nginx { port, dir, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not listen: {}",
                nginx.error_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("nginx error log:\n{}", self.error_log());
        }
    }
}
