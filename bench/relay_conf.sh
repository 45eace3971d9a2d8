# relay_conf.sh: nginx and HAProxy as single-process WebSocket relays in front
# of 127.0.0.1:$UP_PORT (sourced by run-relay.sh and paired.sh). Uses TMP,
# UP_PORT, NGINX_CONNS (nginx's descriptor and connection limit), MAXCONN,
# NGINX and HAPROXY (the binaries) and PIN_SERVER (the command prefix).

write_nginx_conf() { # port
    mkdir -p "$TMP/nginx"
    # nginx opens its default error log before reading the configuration:
    # -e sends that to our file too.
    cat >"$TMP/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
master_process off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
worker_rlimit_nofile $NGINX_CONNS;
events {
    # nginx starts dropping connections still reading their request once
    # fewer than 1/16 of these are free: size it to the descriptor limit.
    worker_connections $NGINX_CONNS;
}
http {
    access_log off;
    client_body_temp_path $TMP/nginx/body;
    proxy_temp_path $TMP/nginx/proxy;
    server {
        listen 127.0.0.1:$1 backlog=4096;
        location / {
            proxy_pass http://127.0.0.1:$UP_PORT;
            proxy_http_version 1.1;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_set_header Host \$host;
            proxy_buffering off;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
        }
    }
}
EOF
}

write_haproxy_conf() { # port
    cat >"$TMP/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn $MAXCONN
defaults
    mode http
    maxconn $MAXCONN
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h
frontend relay
    bind 127.0.0.1:$1
    default_backend upstream
backend upstream
    server echo 127.0.0.1:$UP_PORT
EOF
}

# Starts nginx or HAProxy ($1) on port $2 in the background of this shell ($!
# is its PID); 1 when its binary is missing.
launch_relay() { # nginx|haproxy port
    case $1 in
    nginx)
        [ -x "$NGINX" ] || { log "nginx: $NGINX not found"; return 1; }
        write_nginx_conf "$2"
        "${PIN_SERVER[@]}" "$NGINX" -p "$TMP/nginx" -e "$TMP/nginx/error.log" \
            -c "$TMP/nginx/nginx.conf" >"$TMP/$1.log" 2>&1 &
        ;;
    haproxy)
        [ -x "$HAPROXY" ] || { log "haproxy: $HAPROXY not found"; return 1; }
        write_haproxy_conf "$2"
        "${PIN_SERVER[@]}" "$HAPROXY" -db -f "$TMP/haproxy.cfg" >"$TMP/$1.log" 2>&1 &
        ;;
    esac
}
