/* A stand-in for an IJulia kernel: no Julia is installed here.
 *
 * Started with argv[0] = "julia" and IJulia's real arguments, so its
 * /proc/PID/cmdline is exactly what a real IJulia kernel shows. It LISTENs on
 * the TCP ports named in $STANDIN_PORTS (comma-separated, 127.0.0.1), which
 * the test also writes into the connection file, then sleeps until killed.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(void) {
    const char *env = getenv("STANDIN_PORTS");
    if (!env) { fprintf(stderr, "STANDIN_PORTS unset\n"); return 2; }
    char *ports = strdup(env);
    for (char *tok = strtok(ports, ","); tok; tok = strtok(NULL, ",")) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(atoi(tok))};
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) || listen(fd, 1)) {
            perror("standin listen");
            return 3;
        }
    }
    printf("ready\n");
    fflush(stdout);
    for (;;) pause();
}
