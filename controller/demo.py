"""``make demo``: RoleCall on one machine, step by step, cleaning up after itself.

At this stage: initialise a controller in a temporary state directory, start it, create the
original design's role and instance profile with boto3, print them, and stop the controller.
"""

from __future__ import annotations

import configparser
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

BIN = Path(sys.executable).parent
TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "ec2.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}
S3STAR = (
    '{"Version":"2008-10-17","Statement":[{"Effect":"Allow","Action":["s3:*"],"Resource":["*"]}]}'
)
LISTENING = re.compile(r"public API listening on (http://\S+)")


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def start(state_dir: Path) -> tuple[subprocess.Popen[str], str]:
    """Start ``rolecall-controller serve`` on a free port, logging to state_dir/controller.log."""
    log_path = state_dir / "controller.log"
    process = subprocess.Popen(
        [str(BIN / "rolecall-controller"), "--state-dir", str(state_dir), "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # Ctrl-C reaches the demo, which stops the controller itself
    )
    found: queue.Queue[str] = queue.Queue()

    def record() -> None:
        assert process.stdout is not None
        with log_path.open("a", encoding="utf-8") as log:
            for line in process.stdout:
                log.write(line)
                log.flush()
                match = LISTENING.search(line)
                if match:
                    found.put(match.group(1))
        found.put("")

    threading.Thread(target=record, daemon=True).start()
    try:
        url = found.get(timeout=30)
    except queue.Empty:
        url = ""
    except BaseException:  # Ctrl-C while waiting: never leave the controller behind
        stop(process)
        raise
    if not url:
        stop(process)
        print(log_path.read_text(encoding="utf-8"), file=sys.stderr)
        raise SystemExit("the controller did not start; its log is above")
    print(f"    listening on {url} (log: {log_path})")
    return process, url


def stop(process: subprocess.Popen[str]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def run(state_dir: Path) -> None:
    import boto3

    step("rolecall-controller init (a new state directory, SQLite store, account and root key)")
    subprocess.run(
        [str(BIN / "rolecall-controller"), "--state-dir", str(state_dir), "init"], check=True
    )
    step("rolecall-controller serve")
    process, url = start(state_dir)
    try:
        credentials = configparser.ConfigParser()
        credentials.read(state_dir / "root-credentials")
        iam = boto3.client(
            "iam",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id=credentials["rolecall"]["aws_access_key_id"],
            aws_secret_access_key=credentials["rolecall"]["aws_secret_access_key"],
        )
        step("boto3: create role s3access, trusted by ec2.amazonaws.com")
        role = iam.create_role(RoleName="s3access", AssumeRolePolicyDocument=json.dumps(TRUST))
        print(f"    {role['Role']['Arn']}  ({role['Role']['RoleId']})")
        step("boto3: put inline policy s3star on s3access")
        iam.put_role_policy(RoleName="s3access", PolicyName="s3star", PolicyDocument=S3STAR)
        policy = iam.get_role_policy(RoleName="s3access", PolicyName="s3star")
        print(f"    {json.dumps(policy['PolicyDocument'])}")
        step("boto3: create instance profile s3access and add the role")
        iam.create_instance_profile(InstanceProfileName="s3access")
        iam.add_role_to_instance_profile(InstanceProfileName="s3access", RoleName="s3access")
        profile = iam.get_instance_profile(InstanceProfileName="s3access")["InstanceProfile"]
        print(f"    {profile['Arn']}  ({profile['InstanceProfileId']})")
        print(f"    roles: {[r['RoleName'] for r in profile['Roles']]}")
        step("aws CLI: the same profile, read with only an endpoint URL")
        command = [
            str(BIN / "aws"), "--profile", "rolecall", "--region", "us-east-1",
            "--endpoint-url", url, "--output", "text", "iam", "list-instance-profiles-for-role",
            "--role-name", "s3access", "--query", "InstanceProfiles[].Arn",
        ]  # fmt: skip
        print(f"    $ aws --endpoint-url {url} iam list-instance-profiles-for-role ...")
        env = dict(os.environ, AWS_SHARED_CREDENTIALS_FILE=str(state_dir / "root-credentials"))
        env["AWS_CONFIG_FILE"] = os.devnull
        listed = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        print(f"    {listed.stdout.strip()}")
    finally:
        step("stopping the controller (SIGTERM)")
        code = stop(process)
        print(f"    exited with status {code}")
        log = (state_dir / "controller.log").read_text(encoding="utf-8").splitlines()
        print(f"    its last log lines ({len(log)} in all):")
        for line in log[-3:]:
            print(f"      {line}")
    if code != 0:
        raise SystemExit(f"the controller exited with status {code}")


def main() -> int:
    state_dir = Path(tempfile.mkdtemp(prefix="rolecall-demo-"))
    try:
        run(state_dir / "state")
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
    step(f"done; removed {state_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
