"""AWS IoT Core side of tests/export.rs, against moto's server mode (boto3 as client).

  serve PORT           run moto on 127.0.0.1:PORT, certificate ids = SHA-256 of the DER
                       (moto's `iot.use_valid_cert`, which is how AWS computes them)
  register URL DIR     register the CA (ca-registration.json as given to
                       register_ca_certificate), then every certificate of
                       certificates.jsonl, alternately with the CA and without one;
                       create each thing and attach its certificate
  apply URL DIR        apply status-updates.jsonl with update_certificate
  state URL            every certificate's status and every thing's principals
Prints one JSON object on stdout.
"""
import json
import os
import sys


def client(url):
    import boto3

    return boto3.client(
        "iot",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def lines(path):
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


def serve(port):
    from moto.core.config import default_user_config
    from moto.server import main

    default_user_config.setdefault("iot", {})["use_valid_cert"] = True
    main(["-H", "127.0.0.1", "-p", str(port)])


def register(url, d):
    iot = client(url)
    with open(os.path.join(d, "ca-registration.json")) as f:
        ca_req = json.load(f)
    # boto3 validates every parameter name and type against the AWS API model.
    ca = iot.register_ca_certificate(**ca_req)
    out = {"ca_certificate_id": ca["certificateId"], "devices": []}
    for i, m in enumerate(lines(os.path.join(d, "certificates.jsonl"))):
        if i % 2 == 0:
            r = iot.register_certificate(
                certificatePem=m["certificatePem"],
                caCertificatePem=m["caCertificatePem"],
                setAsActive=True,
            )
            via = "with-ca"
        else:
            r = iot.register_certificate_without_ca(
                certificatePem=m["certificatePem"], status="ACTIVE"
            )
            via = "without-ca"
        desc = iot.describe_certificate(certificateId=r["certificateId"])
        iot.create_thing(thingName=m["thingName"])
        iot.attach_thing_principal(thingName=m["thingName"], principal=r["certificateArn"])
        out["devices"].append(
            {
                "serial": m["serial"],
                "thing": m["thingName"],
                "expected_id": m["certificateId"],
                "aws_id": r["certificateId"],
                "via": via,
                "status": desc["certificateDescription"]["status"],
            }
        )
    by_ca = iot.list_certificates_by_ca(caCertificateId=ca["certificateId"])
    out["by_ca"] = sorted(c["certificateId"] for c in by_ca["certificates"])
    return out


def apply(url, d):
    iot = client(url)
    done = []
    for u in lines(os.path.join(d, "status-updates.jsonl")):
        iot.update_certificate(**u)
        done.append(u["certificateId"])
    return {"applied": done}


def state(url):
    iot = client(url)
    certs = {
        c["certificateId"]: c["status"]
        for c in iot.list_certificates(pageSize=250)["certificates"]
    }
    things = {}
    for t in iot.list_things()["things"]:
        things[t["thingName"]] = iot.list_thing_principals(thingName=t["thingName"])["principals"]
    return {"certificates": certs, "things": things}


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "serve":
        serve(int(sys.argv[2]))
    else:
        if cmd == "state":
            res = state(sys.argv[2])
        else:
            res = {"register": register, "apply": apply}[cmd](sys.argv[2], sys.argv[3])
        json.dump(res, sys.stdout)
