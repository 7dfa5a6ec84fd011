"""The command-line tools of the original design: ``iam-role*`` and ``iam-instanceprofile*`` for
roles, their policies and instance profiles, ``iam-group*`` for groups, their users and policies,
``euca-*-instances`` for EC2 instances and ``euca-*-keypair(s)`` for key pairs.

They find credentials, region and endpoint the way AWS tools do (:mod:`.client`), sign with the
project's own SigV4 signer and speak the AWS Query API with ``requests``. One module per family:
:mod:`.roles`, :mod:`.instance_profiles`, :mod:`.groups`, :mod:`.instances`, :mod:`.keypairs`;
:mod:`.command` is what every tool shares (common flags, one-line errors, exit codes).
docs/cli.md shows each tool at work.
"""
